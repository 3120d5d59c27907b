"""The one interface every model follows: fit on training cells, predict cell-level AnnData.

A model is fitted on an :class:`~perturbcast.data.Experiment` (optionally a mask of training
cells) and predicts, for (perturbation, context) pairs, cells built from the control cells of
that context in any experiment with the same genes. Saved models carry their config, gene list
and perturbation vocabulary, so they can be applied to a new file without guessing.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd

from ..data.experiment import Experiment
from ..data.labels import canonical_label
from ..data.preprocess import uns_record
from ..errors import InputError, preview, suggest
from ..utils import atomic_path, json_text
from .param_types import check_param_ranges, loading_saved, saved_params
from .prediction_rules import clip_keep_mean, context_control_mean

Condition = tuple[str, str]
FORMAT_VERSION = 1


MATCH_CONTROL_MEAN = True
"""Predictions start from ``n`` control cells drawn from the context; their mean differs from
the context's control mean by sampling noise (sd / sqrt(n) per gene), which every predicted
mean change then carries. With this on, the drawn cells are shifted (each gene by one
constant) so their mean is the mean of all the context's controls: cells keep their spread
and the prediction's mean change is the model's, not the draw's. (Chosen on inner folds of
the training cells: ``benchmarks/bench_nonnegative.py``.)"""


class PerturbationModel(ABC):
    """Base class: subclasses implement :meth:`_fit` and :meth:`_predict_cells`.

    Parameters
    ----------
    seed : int
        Seed for every random choice (control-cell sampling, training).
    """

    name: ClassVar[str] = "base"

    def __init__(self, seed: int = 0, **params: Any) -> None:
        if not loading_saved():
            check_param_ranges(self.name, params, self.param_defaults())
        self.seed = seed
        self.params = params
        self.genes: np.ndarray | None = None
        self.vocabulary: list[str] = []
        self.contexts: list[str] = []
        self.keys: dict[str, Any] = {}
        #: the (perturbation, context) pairs of the training cells (controls left out)
        self.trained_conditions: list[tuple[str, str]] | None = None

    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        """Names of the parameters this model takes (``--param KEY=VALUE``, ``get_model``)."""
        return tuple(cls.param_defaults())

    #: parameters that take more than one kind of value (checked by :meth:`check_loose`)
    loose_params: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def check_loose(cls, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with the loose parameters checked and normalised, before any work (a
        model with loose parameters that :meth:`__init__` does not check overrides this)."""
        return params

    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        """Each parameter and its default, against which ``get_model`` checks the values'
        kinds. Default: the keyword parameters of ``__init__`` other than ``seed``; a model
        that takes ``**params`` with a table of defaults overrides this."""
        sig = inspect.signature(cls.__init__)
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {n: p.default for n, p in sig.parameters.items()
                if p.kind in kinds and n not in ("self", "seed")}

    # ---- public API --------------------------------------------------------------------------
    def fit(self, exp: Experiment, train_mask: np.ndarray | None = None) -> PerturbationModel:
        """Fit on the cells of ``exp`` selected by ``train_mask`` (default: all cells)."""
        mask = np.ones(exp.n_cells, bool) if train_mask is None else np.asarray(train_mask, bool)
        if not (mask & exp.is_control).any():
            raise InputError("training cells contain no control cells; keep controls in training.")
        if not (mask & ~exp.is_control).any():
            raise InputError("training cells contain no perturbed cells; a model learns from "
                             "perturbed cells and their controls, so keep both in training.")
        self.genes = exp.genes.copy()
        self.vocabulary = sorted(set(exp.perturbations[mask]) - {exp.control})
        self.contexts = sorted(set(exp.contexts[mask]))
        pairs = pd.DataFrame({"p": exp.perturbations[mask], "c": exp.contexts[mask]})
        self.trained_conditions = sorted(map(tuple, pairs[pairs.p != exp.control]
                                             .drop_duplicates().to_numpy().tolist()))
        self.keys = {"perturbation_key": exp.perturbation_key, "control": exp.control,
                     "context_key": exp.context_key, "batch_key": exp.batch_key,
                     "separator": exp.separator, "normalization": exp.normalization,
                     "exclude": list(exp.meta.get("excluded", {}))}
        self._fit(exp, mask)
        return self

    def check_can_predict(self, exp: Experiment, perturbations: Iterable[str],
                          train_mask: np.ndarray | None = None) -> None:
        """Raise InputError now if fitting on ``train_mask`` could not predict ``perturbations``
        (e.g. an unseen perturbation with no gene vector), so a benchmark fails before the long
        fit rather than after it. Default: every model can predict any label."""
        return None

    def predict(
        self,
        exp: Experiment,
        conditions: Iterable[Condition] | pd.DataFrame,
        n_cells: int | Mapping[Condition, int] = 100,
        include_controls: bool = False,
        **options: Any,
    ) -> ad.AnnData:
        """Predict cells for each (perturbation, context) from that context's control cells.

        Parameters
        ----------
        exp : Experiment holding control cells for every requested context (same genes)
        conditions : (perturbation, context) pairs, or a DataFrame with those columns
            (and optionally ``n_cells``)
        n_cells : cells per condition (int), or a mapping condition -> count
        include_controls : append the contexts' real control cells (cell-eval convention)
        **options : passed to the subclass's ``_predict_cells`` (e.g. the in-context model's
            prompt source)

        Returns
        -------
        AnnData, shape (sum of n_cells, n_genes): X float32 log1p expression, obs with the
        perturbation column (``perturbation_key``) and ``context`` (plus ``context_key``).
        """
        self._check_fitted()
        conds, counts = _parse_conditions(conditions, n_cells)
        sep, control = self.keys.get("separator", "+"), self.keys.get("control", exp.control)
        conds = [(canonical_label(p, sep, control), c) for p, c in conds]
        have = sorted({str(c) for c in exp.contexts[exp.is_control]})
        lacking = sorted({str(c) for _, c in conds} - set(have))
        if lacking:  # before the unseen-context notice, which would promise a prediction
            raise InputError(f"no control cells for context {lacking[0]!r} in the input."
                             f"{suggest(lacking[0], have)} Contexts with controls: "
                             f"{preview(have)}.")
        unseen = sorted({c for _, c in conds} - set(self.contexts))
        if unseen:
            warnings.warn(f"{self.name}: context(s) {preview(unseen, 5)} were not in training "
                          f"(trained on {preview(self.contexts, 5)}); predicting there from "
                          f"their control cells only.", stacklevel=2)
        gene_idx = self._gene_index(exp)
        ctrl = exp.is_control
        blocks, labels, ctxs = [], [], []
        for (pert, ctx), n in zip(conds, counts, strict=True):
            pool = np.flatnonzero(ctrl & (exp.contexts == ctx))
            rng = np.random.default_rng([self.seed, zlib.crc32(f"{pert}|{ctx}".encode())])
            pick = np.sort(rng.choice(pool, n, replace=n > pool.size))  # n = pool: all once
            x_ctrl = exp.rows(pick)[:, gene_idx]
            if MATCH_CONTROL_MEAN and pick.size != pool.size:  # the drawn controls' mean is
                # the context's (see above); drawing every control once already has it
                mean = context_control_mean(exp, ctx, pool, gene_idx)
                x_ctrl = x_ctrl + (mean - x_ctrl.mean(0)).astype(np.float32)
            pred = self._predict_cells(x_ctrl, pert, ctx, exp, pool, ctrl_idx=pick, **options)
            blocks.append(clip_keep_mean(np.asarray(pred, np.float32)))  # float32 in and out
            labels += [pert] * n
            ctxs += [ctx] * n
        if include_controls:
            for ctx in sorted(set(c for _, c in conds)):
                pool = np.flatnonzero(ctrl & (exp.contexts == ctx))
                blocks.append(exp.rows(pool)[:, gene_idx])
                labels += [exp.control] * pool.size
                ctxs += [ctx] * pool.size
        x = np.concatenate(blocks) if blocks else np.zeros((0, len(self.genes)), np.float32)
        obs = pd.DataFrame({self.keys["perturbation_key"]: labels, "context": ctxs})
        ckey = self.keys.get("context_key")
        if ckey and ckey not in obs:
            obs[ckey] = ctxs
        obs.index = [f"pred{i}" for i in range(len(obs))]
        out = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=self.genes.astype(str)))
        out.uns["perturbcast"] = {"model": self.name, "seed": self.seed,
                                  "normalization": uns_record(exp.normalization),
                                  "context_key": ckey or ""}
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Save to a directory (config.json + state.npz), atomically."""
        self._check_fitted()
        path = Path(path)
        with atomic_path(path, is_dir=True) as tmp:
            config = {"format_version": FORMAT_VERSION, "model": self.name, "seed": self.seed,
                      "params": self.params, "genes": self.genes.tolist(),
                      "vocabulary": self.vocabulary, "contexts": self.contexts, "keys": self.keys,
                      "trained_conditions": self.trained_conditions}
            (tmp / "config.json").write_text(json_text(config, indent=2))
            np.savez(tmp / "state.npz", **self._state())
            self._save_extra(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PerturbationModel:
        """Load any saved model (the class is read from its config)."""
        from . import get_model_class

        path = Path(path)
        cfg_file = path / "config.json"
        if not path.exists():
            raise InputError(f"model folder {path} does not exist; pass the --out folder of "
                             f"`perturbcast train` (or a model's save() folder).")
        if not cfg_file.exists():
            raise InputError(f"{path} is not a saved perturbcast model (no config.json).")
        config = json.loads(cfg_file.read_text())
        model_cls = get_model_class(config["model"])
        with saved_params():  # ranges govern fitting: a model saved under older rules loads
            model = model_cls(seed=config["seed"], **config["params"])
        model.genes = np.asarray(config["genes"], dtype=object)
        model.vocabulary = list(config["vocabulary"])
        model.contexts = list(config["contexts"])
        model.keys = dict(config["keys"])
        if "trained_conditions" in config:  # models saved before it was recorded: None
            model.trained_conditions = [tuple(c) for c in config["trained_conditions"]]
        with np.load(path / "state.npz", allow_pickle=True) as state:
            model._set_state({k: state[k] for k in state.files})
        model._load_extra(path)
        return model

    # ---- for subclasses ------------------------------------------------------------------------
    @abstractmethod
    def _fit(self, exp: Experiment, mask: np.ndarray) -> None: ...

    @abstractmethod
    def _predict_cells(
        self, x_ctrl: np.ndarray, perturbation: str, context: str, exp: Experiment,
        ctrl_pool: np.ndarray, ctrl_idx: np.ndarray | None = None,
    ) -> np.ndarray:
        """Predicted cells, shape (n, n_genes), from sampled controls ``x_ctrl`` (n, n_genes).

        ``ctrl_pool``: the context's control cells in ``exp``; ``ctrl_idx``: the rows of
        ``exp`` that ``x_ctrl`` holds (for batch-aware models)."""

    def _state(self) -> dict[str, np.ndarray]:
        return {}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        return None

    def _save_extra(self, directory: Path) -> None:
        return None

    def _load_extra(self, directory: Path) -> None:
        return None

    # ---- helpers ---------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if self.genes is None:
            raise InputError(f"model {self.name!r} is not fitted; call fit() or load() first.")

    def _gene_index(self, exp: Experiment) -> np.ndarray:
        pos = {g: i for i, g in enumerate(exp.genes)}
        missing = [g for g in self.genes if g not in pos]
        if missing:
            raise InputError(
                f"{len(missing)} of the model's {len(self.genes)} genes are missing from the "
                f"input ({preview(missing, 5)}); use a file measured on the same genes."
            )
        return np.asarray([pos[g] for g in self.genes])


def _parse_conditions(conditions, n_cells) -> tuple[list[Condition], list[int]]:
    if isinstance(conditions, pd.DataFrame):
        conds = [(str(p), str(c)) for p, c in conditions[["perturbation", "context"]].to_numpy()]
        if "n_cells" in conditions and not isinstance(n_cells, Mapping):
            return conds, [int(n) for n in conditions["n_cells"]]
    else:
        conds = [(str(p), str(c)) for p, c in conditions]
    if isinstance(n_cells, Mapping):
        return conds, [int(n_cells[c]) for c in conds]
    return conds, [int(n_cells)] * len(conds)
