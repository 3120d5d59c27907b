"""Predict a perturbation x context grid and stream it to one .h5ad, with a summary table.

Memory is bounded by one condition's cells (or a small fixed budget, ``batch_bytes``, when
several conditions fit in it): conditions are predicted in batches of whole conditions, each
condition appended to the file and summarised, then dropped. The file is written under a temporary
name and renamed at the end, so an interrupted atlas leaves no complete-looking file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..data.experiment import Experiment
from ..errors import InputError, preview
from ..models.base import PerturbationModel
from ..utils import atomic_path, progress
from .h5ad_stream import StreamingH5ad

SUMMARY_COLUMNS = ["perturbation", "context", "n_cells", "effect_l2", "n_genes_changed",
                   "change_threshold", "top_up", "top_down"]


@dataclass
class AtlasResult:
    """Where an atlas was written, and its per-condition tables (one row per condition)."""

    path: Path
    summary_path: Path
    summary: pd.DataFrame
    ranked_path: Path | None = None
    ranked: pd.DataFrame | None = None


def beside(out_path: str | os.PathLike, suffix: str) -> Path:
    """``atlas.h5ad`` -> ``atlas{suffix}`` (e.g. ``.summary.csv``)."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.stem + suffix)


def parse_names(spec: str | None, every: Sequence[str], what: str) -> list[str]:
    """Names from 'all' (= ``every``), '@file' (one per line) or a comma list; order kept."""
    if spec is None or spec.strip() == "all":
        names = list(every)
    elif spec.startswith("@"):
        path = Path(spec[1:])
        if not path.exists():
            raise InputError(f"--{what} file not found: {path}.")
        names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    else:
        names = [s.strip() for s in spec.split(",") if s.strip()]
    names = list(dict.fromkeys(names))
    if not names:
        raise InputError(f"--{what} selects nothing; give names, @file or 'all'.")
    return names


def summarise(delta: np.ndarray, genes: np.ndarray, threshold: float, top: int) -> dict:
    """Effect size and top genes of a mean change ``delta``, shape (n_genes,)."""
    order = np.argsort(-delta, kind="stable")
    up = [str(genes[i]) for i in order[:top] if delta[i] > 0]
    down = [str(genes[i]) for i in order[::-1][:top] if delta[i] < 0]
    return {"effect_l2": float(np.linalg.norm(delta)),
            "n_genes_changed": int((np.abs(delta) > threshold).sum()),
            "change_threshold": threshold, "top_up": ";".join(up), "top_down": ";".join(down)}


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)


def predict_atlas(
    model: PerturbationModel,
    exp: Experiment,
    perturbations: Sequence[str],
    contexts: Sequence[str] | None,
    n_cells: int,
    out_path: str | os.PathLike,
    *,
    summary_path: str | os.PathLike | None = None,
    scorer: Any = None,
    ranked_path: str | os.PathLike | None = None,
    change_threshold: float = 0.5,
    top_genes: int = 10,
    include_controls: bool = False,
    batch_bytes: int = 16 << 20,
    show_progress: bool = True,
    **predict_kwargs: Any,
) -> AtlasResult:
    """Predict every (perturbation, context) and stream the cells to one .h5ad.

    Parameters
    ----------
    model : a fitted model (any :class:`PerturbationModel`)
    exp : Experiment with control cells of every context (the model's genes)
    perturbations : labels to predict (any the model accepts)
    contexts : contexts to predict in (None: every context with control cells)
    n_cells : predicted cells per condition
    out_path : .h5ad to write: X float32 (n_conditions * n_cells, n_genes) log1p; obs columns
        ``perturbation`` and ``context`` (categorical; plus the model's perturbation and
        context keys when named differently); controls appended last when
        ``include_controls``
    summary_path : CSV of :data:`SUMMARY_COLUMNS`, one row per condition (default:
        ``<out>.summary.csv``); effect = predicted mean - the context's control mean
    scorer : an in-silico screen target (:func:`perturbcast.atlas.screen.read_target`); adds
        its score to the summary and writes the conditions ranked by it to ``ranked_path``
        (default ``<out>.ranked.csv``)
    change_threshold : |mean change| above which a gene counts as changed (log1p units)
    top_genes : genes listed in ``top_up`` / ``top_down``
    batch_bytes : conditions are passed to ``model.predict`` together while their cells fit
        in this many bytes (float32), one at a time when one condition is larger; this
        amortises the per-call cost of ``predict`` without changing any prediction (each
        condition's control cells are drawn from its own seed); also the size of the file's
        write buffer. Peak memory is a few times ``max(batch_bytes, one condition's cells)``
    **predict_kwargs : passed to ``model.predict`` (e.g. ``prompt=`` for in-context models)
    """
    model._check_fitted()
    gene_idx = model._gene_index(exp)
    genes = np.asarray(model.genes).astype(str)
    ctrl_ctx = sorted(set(exp.contexts[exp.is_control]))
    contexts = list(contexts) if contexts is not None else ctrl_ctx
    no_ctrl = [c for c in contexts if c not in set(ctrl_ctx)]
    if no_ctrl:
        raise InputError(f"no control cells for context(s) {preview(no_ctrl, 5)} in the input; "
                         f"contexts with controls: {preview(ctrl_ctx)}.")
    perturbations = list(dict.fromkeys(map(str, perturbations)))
    if not perturbations or not contexts or n_cells < 1:
        raise InputError("the atlas is empty: give at least one perturbation, one context and "
                         "--n-cells >= 1.")
    keys, means = exp.group_means(("context",), mask=exp.is_control)
    ctrl_mean = {str(c): m[gene_idx] for c, m in zip(keys.context, means, strict=True)}
    if scorer is not None:
        scorer.prepare(exp, gene_idx, genes, contexts, seed=model.seed)

    add_ctrl = include_controls and exp.control not in perturbations
    pert_cats = perturbations + ([exp.control] if add_ctrl else [])
    columns = {"perturbation": pert_cats, "context": contexts}
    aliases = {model.keys.get("perturbation_key"): "perturbation",
               model.keys.get("context_key"): "context"}
    aliases = {k: v for k, v in aliases.items() if k and k not in columns}
    columns.update({k: columns[v] for k, v in aliases.items()})

    out_path = Path(out_path)
    summary_path = Path(summary_path) if summary_path else beside(out_path, ".summary.csv")
    if scorer is not None:
        ranked_path = Path(ranked_path) if ranked_path else beside(out_path, ".ranked.csv")
    uns = {"perturbcast": {"model": model.name, "seed": model.seed, "n_cells": n_cells,
                           "kind": "atlas"}}
    rows = []
    with contextlib.ExitStack() as stack:
        tmp_h5 = stack.enter_context(atomic_path(out_path))
        tmp_csv = stack.enter_context(atomic_path(summary_path))
        tmp_rank = stack.enter_context(atomic_path(ranked_path)) if scorer is not None else None
        writer = stack.enter_context(StreamingH5ad(tmp_h5, genes, columns, uns=uns,
                                                   buffer_bytes=batch_bytes))
        bar = stack.enter_context(progress(disable=not show_progress))
        task = bar.add_task("atlas", total=len(perturbations) * len(contexts))
        grid = [(pi, ci) for ci in range(len(contexts)) for pi in range(len(perturbations))]
        per_call = max(1, batch_bytes // (4 * n_cells * len(genes)))
        for start in range(0, len(grid), per_call):
            batch = grid[start:start + per_call]
            conds = [(perturbations[pi], contexts[ci]) for pi, ci in batch]
            pred = model.predict(exp, conds, n_cells=n_cells, **predict_kwargs)
            if list(pred.var_names) != list(genes):
                raise RuntimeError(f"{model.name} predicted genes not in the model's order")
            obs = pred.obs
            rows_of = pd.Series(np.arange(len(obs))).groupby(
                [obs[model.keys["perturbation_key"]].astype(str).to_numpy(),
                 obs["context"].astype(str).to_numpy()]).indices
            x_all = pred.X
            del pred, obs
            for (pi, ci), (pert, ctx) in zip(batch, conds, strict=True):
                if (pert, ctx) not in rows_of:
                    raise RuntimeError(f"{model.name} returned no cells labelled {pert!r} in "
                                       f"{ctx!r}")
                x = _dense(x_all[rows_of[(pert, ctx)]])
                codes = {"perturbation": pi, "context": ci}
                writer.append(x, {**codes, **{k: codes[v] for k, v in aliases.items()}})
                delta = x.mean(0, dtype=np.float64) - ctrl_mean[ctx]
                row = {"perturbation": pert, "context": ctx, "n_cells": x.shape[0],
                       **summarise(delta, genes, change_threshold, top_genes)}
                if scorer is not None:
                    row[scorer.score_name] = scorer.score(x, ctx)
                rows.append(row)
            del x_all
            bar.advance(task, len(batch))
        if include_controls:
            codes = {"perturbation": pert_cats.index(exp.control)}
            for ci, ctx in enumerate(contexts):
                codes["context"] = ci
                pool = np.flatnonzero(exp.is_control & (exp.contexts == ctx))
                for start in range(0, pool.size, 4096):
                    block = exp.rows(pool[start:start + 4096])[:, gene_idx]
                    writer.append(block, {**codes, **{k: codes[v] for k, v in aliases.items()}})
        writer.close()
        summary = pd.DataFrame(rows)
        summary.to_csv(tmp_csv, index=False)
        ranked = None
        if scorer is not None:
            ranked = rank(summary, scorer.score_name)
            ranked.to_csv(tmp_rank, index=False)
    return AtlasResult(out_path, summary_path, summary, ranked_path, ranked)


def rank(summary: pd.DataFrame, score: str) -> pd.DataFrame:
    """Conditions sorted by ``score`` (best first; ties by name), with a 1-based ``rank``."""
    cols = ["perturbation", "context", score, "effect_l2", "top_up", "top_down"]
    out = summary[cols].sort_values([score, "perturbation", "context"],
                                     ascending=[False, True, True], na_position="last")
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out.reset_index(drop=True)


def print_ranked(ranked: pd.DataFrame, console, n: int = 20) -> None:
    """Print the top ``n`` rows of a ranked table with rich."""
    from rich.table import Table

    score = ranked.columns[3]
    table = Table(title=f"in-silico screen: top {min(n, len(ranked))} by {score}")
    for col in ("rank", "perturbation", "context", "score", "top_up", "top_down"):
        table.add_column(col, justify="right" if col in ("rank", "score") else "left")
    for r in ranked.head(n).itertuples(index=False):
        d = r._asdict()
        table.add_row(str(d["rank"]), d["perturbation"], d["context"], f"{d[score]:.3f}",
                      ";".join(str(d["top_up"]).split(";")[:3]),
                      ";".join(str(d["top_down"]).split(";")[:3]))
    console.print(table)
