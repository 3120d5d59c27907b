"""Scale detection, count normalisation (total 1e4 + log1p) and HVG selection."""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp

Scale = Literal["counts", "log1p", "normalized"]

TARGET_SUM = 1e4
LOG1P_MAX = 15.0  # log1p(3.3e6): anything above is not log1p of a normalised count


def _values(x) -> np.ndarray:
    """Stored values of a dense or sparse block, as a flat array."""
    if sp.issparse(x):
        return np.asarray(x.data).ravel()
    return np.asarray(x).ravel()


def detect_scale(x, max_rows: int = 2000) -> Scale:
    """Guess whether ``x`` holds raw counts, log1p-normalised or normalised (unlogged) values.

    Parameters
    ----------
    x : array or sparse matrix, shape (n_cells, n_genes)
        Expression (only the first ``max_rows`` rows are inspected).

    Returns
    -------
    'counts' when every value is a whole number; 'log1p' when values are fractional and below
    15 (the range of log1p-normalised data, as cell-eval assumes); 'normalized' otherwise.
    """
    vals = _values(x[:max_rows])
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return "log1p"
    frac = np.abs(vals - np.round(vals))
    if not np.any(frac > 1e-3):
        return "counts"
    return "log1p" if float(vals.max()) < LOG1P_MAX else "normalized"


def normalize_log1p(x, scale: Scale, target_sum: float = TARGET_SUM):
    """Return float32 log1p(total-normalised) expression from ``x`` at the given scale.

    Counts and normalised values are scaled so each cell sums to ``target_sum`` and then
    log1p-transformed; log1p input is returned as float32 unchanged. Sparse stays sparse.
    """
    if scale == "log1p":
        return x.astype(np.float32) if x.dtype != np.float32 else x
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float32)
        totals = np.asarray(x.sum(axis=1)).ravel()
        scale_f = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
        x = sp.diags(scale_f.astype(np.float32)) @ x
        x = sp.csr_matrix(x)
        np.log1p(x.data, out=x.data)
        return x
    x = np.asarray(x, dtype=np.float32)
    totals = x.sum(axis=1, keepdims=True)
    scale_f = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(x * scale_f)


def highly_variable_genes(x, n_top: int, keep: np.ndarray | None = None) -> np.ndarray:
    """Indices (sorted) of the ``n_top`` genes with the highest log1p variance.

    Parameters
    ----------
    x : array or sparse matrix, shape (n_cells, n_genes)
        log1p-normalised expression.
    n_top : int
        Number of genes to keep.
    keep : bool array, shape (n_genes,), optional
        Genes always kept (e.g. perturbation targets); they count towards ``n_top``.
    """
    if sp.issparse(x):
        mean = np.asarray(x.mean(axis=0)).ravel()
        sq = np.asarray(x.multiply(x).mean(axis=0)).ravel()
        var = sq - mean**2
    else:
        var = np.asarray(x, dtype=np.float64).var(axis=0)
    order = np.argsort(-var, kind="stable")
    chosen = np.zeros(var.size, dtype=bool)
    if keep is not None:
        chosen |= keep
    for g in order:
        if chosen.sum() >= n_top:
            break
        chosen[g] = True
    return np.flatnonzero(chosen)


def normalization_record(input_scale: str) -> dict:
    """``{"input_scale", "target_sum", "log1p"}`` for data read at ``input_scale``."""
    return {"input_scale": str(input_scale),
            "target_sum": None if input_scale == "log1p" else TARGET_SUM, "log1p": True}


def read_normalization(uns) -> dict | None:
    """The ``uns["perturbcast"]["normalization"]`` record of a file (NaN -> None), or None."""
    rec = dict(uns.get("perturbcast", {}) or {}).get("normalization")
    if not isinstance(rec, dict):
        return None
    target = rec.get("target_sum")
    target = None if target is None or np.isnan(float(target)) else float(target)
    return {"input_scale": str(rec.get("input_scale")), "target_sum": target,
            "log1p": bool(rec.get("log1p", True))}


def uns_record(record: dict) -> dict:
    """A normalisation record that h5ad can store in ``uns`` (None -> NaN)."""
    return {k: (float("nan") if v is None else v) for k, v in record.items()}
