"""How predicted cells are made from drawn control cells: the drawn controls' mean matched to the
context's (:func:`context_control_mean`) and non-negative cells that keep the predicted mean
(:func:`clip_keep_mean`). Used by :meth:`~perturbcast.models.base.PerturbationModel.predict`
(``MATCH_CONTROL_MEAN`` there switches the first off)."""

from __future__ import annotations

import zlib

import numpy as np

from ..data.experiment import Experiment


def control_mean(exp, pool: np.ndarray, gene_idx: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Mean of rows ``pool`` of ``exp`` over genes ``gene_idx``, shape (n_genes,), read in
    chunks (a store's context may hold more controls than fit in memory at once)."""
    total = np.zeros(len(gene_idx), np.float64)
    for start in range(0, pool.size, chunk):
        total += exp.rows(pool[start:start + chunk])[:, gene_idx].sum(0, dtype=np.float64)
    return total / max(pool.size, 1)


def context_control_mean(exp: Experiment, ctx: str, pool: np.ndarray,
                         gene_idx: np.ndarray) -> np.ndarray:
    """:func:`control_mean` of a context's control pool, kept with ``exp`` per (context, pool
    size, genes): ``atlas`` predicts in batches of conditions, and a store's pool is read once
    per experiment, not once per batch."""
    memo = exp.__dict__.setdefault("_control_mean_memo", {})
    key = (str(ctx), int(pool.size), zlib.crc32(np.ascontiguousarray(gene_idx).tobytes()))
    if key not in memo:
        memo[key] = control_mean(exp, pool, gene_idx)
    return memo[key]


def clip_keep_mean(cells: np.ndarray) -> np.ndarray:
    """Predicted cells made non-negative without moving their mean change.

    Expression is never below 0, but controls shifted down by a predicted change are (many
    control values are 0). Clipping them at 0 alone raises every such gene's mean, which pulls
    the predicted mean change toward zero for down-regulated genes (on mcfaline23_crossline it
    cost context_mean 0.05 pearson_delta). Here the clipped values of each gene are scaled so
    their mean is the unclipped mean (0 where that is negative).

    Parameters
    ----------
    cells : array, shape (n_cells, n_genes), log1p expression, may hold negative values

    Returns
    -------
    array, shape (n_cells, n_genes), >= 0, per-gene mean ``max(cells.mean(0), 0)``
    """
    out = np.clip(cells, 0.0, None)
    if out.shape[0] == 0:
        return out
    target = np.maximum(cells.mean(0), 0.0)
    mean = out.mean(0)  # >= target: clipping only raises values
    scale = np.divide(target, mean, out=np.ones_like(mean), where=mean > target)
    return out * scale
