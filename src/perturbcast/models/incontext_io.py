"""Prompt sources and inputs of the in-context model: the saved prompt bank, user files."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

from ..data.experiment import Experiment
from ..data.experiment_reader import read_experiment
from ..data.labels import components
from ..errors import InputError, preview
from .incontext_sets import PromptSource

if TYPE_CHECKING:
    from .incontext import InContextModel


def bank_state(exp: Experiment, idx: np.ndarray, perts: np.ndarray, ctxs: np.ndarray,
               per_condition: int, per_control_context: int,
               rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Training cells kept with the model as the default prompt source.

    Up to ``per_condition`` cells per (perturbation, context) and ``per_control_context``
    controls per context, drawn at random; expression stored as float16 (n, n_genes)."""
    keep = []
    frame = pd.DataFrame({"p": perts, "c": ctxs})
    for (p, _), rows in frame.groupby(["p", "c"]).indices.items():
        n = per_control_context if p == exp.control else per_condition
        keep.append(np.sort(rng.permutation(rows)[:n]))
    sel = np.sort(np.concatenate(keep))
    return {"x": exp.rows(idx[sel]).astype(np.float16), "perturbation": perts[sel].astype(str),
            "context": ctxs[sel].astype(str)}


def _components(model: InContextModel):
    sep, ctrl = model.keys["separator"], model.keys["control"]
    return lambda label: components(label, sep, ctrl)


def experiment_like(model: InContextModel, data: Experiment | ad.AnnData,
                    need_labels: bool = True) -> Experiment:
    """An Experiment read with the model's keys (an AnnData without the context column is
    treated as one context, announced; ``need_labels=False`` ignores perturbation labels)."""
    if isinstance(data, Experiment):
        return data
    if not isinstance(data, ad.AnnData):
        raise InputError(f"expected an Experiment or AnnData, got {type(data).__name__}.")
    k = model.keys
    pkey, ckey = k["perturbation_key"], k.get("context_key")
    if ckey and ckey not in data.obs:
        warnings.warn(f"obs column {ckey!r} (the model's context key) is absent: all cells "
                      f"are treated as one context.", stacklevel=3)
        ckey = None
    if not need_labels:  # embeddings use no perturbation labels
        obs = pd.DataFrame({pkey: k["control"]}, index=data.obs_names)
        if ckey:
            obs[ckey] = data.obs[ckey].to_numpy()
        data = ad.AnnData(X=data.X, obs=obs, var=pd.DataFrame(index=data.var_names))
    return read_experiment(data, pkey, k["control"], context_key=ckey, min_cells=1,
                           exclude=k.get("exclude", ()))


def _filtered(exp: Experiment, prompt_filter: dict[str, object] | None) -> Experiment:
    if not prompt_filter:
        return exp
    keep = np.ones(exp.n_cells, bool)
    for key, value in prompt_filter.items():
        if key not in exp.adata.obs:
            raise InputError(f"prompt filter column {key!r} not found in the prompt's obs; "
                             f"columns: {preview(exp.adata.obs.columns)}.")
        values = [str(v) for v in (value if isinstance(value, list | tuple) else [value])]
        keep &= exp.adata.obs[key].astype(str).isin(values).to_numpy()
    if not keep.any():
        raise InputError(f"prompt filter {prompt_filter} selects no cells; check the values.")
    return exp.subset(keep)


def prompt_source(model: InContextModel, prompt: Experiment | ad.AnnData | PromptSource | None,
                  prompt_filter: dict[str, object] | None) -> PromptSource:
    """The prompt source for predictions (default: the model's saved training cells)."""
    comp = _components(model)
    if isinstance(prompt, PromptSource):
        return prompt
    if prompt is None:
        if prompt_filter:
            raise InputError("prompt_filter needs a prompt (--prompt FILE); the default prompt "
                             "is the model's training cells.")
        b = model.bank
        return PromptSource(lambda i: b["x"][i].astype(np.float32), b["perturbation"],
                            b["context"], model.keys["control"], comp,
                            "the model's training cells")
    exp = _filtered(experiment_like(model, prompt), prompt_filter)
    gene_idx = model._gene_index(exp)
    return PromptSource(lambda i: exp.rows(i)[:, gene_idx], exp.perturbations, exp.contexts,
                        exp.control, comp, "the prompt")
