"""What a set model needs at prediction: control cells split into sets (per batch), the
names that will have feature vectors, and the dose to predict at."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from ..data.experiment import Experiment
from .perturbation_features import numeric_doses, resolve_embeddings


def prediction_sets(exp: Experiment, ctrl_idx: np.ndarray | None, n: int, size: int,
                    batch_names: list[str], batch_id: Callable[[str | None], int], model: str
                    ) -> tuple[list[np.ndarray], list[int]]:
    """Split ``n`` control cells (rows ``ctrl_idx`` of ``exp``) into sets of at most ``size``,
    one batch per set where the model was trained with batches; returns the sets' cell
    positions and their batch ids (``batch_id(name)``: 1-based, 0 'unknown', announced)."""
    use_batch = exp.batches is not None and ctrl_idx is not None and bool(batch_names)
    cell_batch = exp.batches[ctrl_idx].astype(str) if use_batch else np.zeros(n, str)
    if batch_names and not use_batch:
        warnings.warn(f"{model}: the model was trained with batches but the input has "
                      f"no batch key; every set is predicted as batch 'unknown'.", stacklevel=4)
    unknown = sorted(map(str, set(cell_batch) - set(batch_names))) if use_batch else []
    if unknown:
        warnings.warn(f"{model}: batch(es) {unknown[:5]} were not in training; their "
                      f"sets are predicted as batch 'unknown'.", stacklevel=4)
    sets, set_batch = [], []
    for name in np.unique(cell_batch):
        g = np.flatnonzero(cell_batch == name)
        bid = batch_id(name if use_batch else None)
        for chunk in np.array_split(g, int(np.ceil(g.size / size))):
            sets.append(chunk)
            set_batch.append(bid)
    return sets, set_batch


def feature_names(exp: Experiment, emb, learned: list[str], model: str) -> np.ndarray:
    """Names that will have a feature vector for ``embeddings`` (no training needed)."""
    genes = exp.genes.astype(str)
    with warnings.catch_warnings():  # the fit itself announces a switch to "train"
        warnings.simplefilter("ignore")
        names, _, _ = resolve_embeddings(
            emb, learned, lambda: (genes, np.zeros((len(genes), 0), np.float32)), model)
    return names


def prediction_dose(exp: Experiment, key: str | None, pert: str, ctx: str,
                    doses: dict[str, float], model: str) -> float:
    """Dose to predict ``pert`` in ``ctx`` at: the median of the input's ``key`` column for
    those cells, else the training median (else 0, announced); 0 without a ``dose_key``."""
    if key is None:
        return 0.0
    if key in exp.adata.obs:
        sel = (exp.perturbations == pert) & (exp.contexts == ctx)
        if sel.any():
            d = numeric_doses(exp.adata.obs[key].to_numpy()[sel], key)
            if np.isfinite(d).any():
                return float(np.nanmedian(d))
    if pert not in doses:
        warnings.warn(f"{model}: no dose for {pert!r} (obs[{key!r}] of the input, or "
                      f"training); predicting it at dose 0.", stacklevel=4)
    return float(doses.get(pert, 0.0))
