"""Putting predicted and real cells on one scale before they are compared.

Predictions made by perturbcast record how their input was normalised in
``uns["perturbcast"]["normalization"]`` (``input_scale``, ``target_sum``, ``log1p``): raw counts
are scaled to ``target_sum`` (1e4) per cell and log1p-transformed when read. A real file of raw
counts is then normalised the same way, not to its median library size (cell-eval's rule, which
would put the two sides on different scales). Files without that record (what cell-eval itself
reads) keep cell-eval's rule exactly.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import scipy.sparse as sp

from ..data.preprocess import detect_scale, normalize_log1p, read_normalization
from ..errors import InputError


def normalization_of(adata: ad.AnnData) -> dict | None:
    """The ``uns["perturbcast"]["normalization"]`` record of a file, or None."""
    return read_normalization(adata.uns)


def target_sum_for(pred_norm: dict | None, real: ad.AnnData) -> float | None:
    """The per-cell total to normalise a raw-count ``real`` file to, so it matches predictions
    made at ``pred_norm`` (None: cell-eval's median rule, for files without a record).

    Raises InputError when the real file holds counts and the predictions' target sum is
    unknown (they were made from log1p input)."""
    if pred_norm is None or detect_scale(real.X) == "log1p":
        return None
    if pred_norm["target_sum"] is None:
        raise InputError(
            "the real file holds raw counts but the predictions were made from log1p input of "
            "unknown total; pass the real cells log1p-normalised like the file the model "
            "predicted from (e.g. read_experiment(...).adata written to .h5ad).")
    return pred_norm["target_sum"]


def check_same_scale(pred_norm: dict | None, real_scale: str, real_target: float | None,
                     real_norm: dict | None) -> None:
    """Fail with one line when predictions and a prepared real side are on different scales.

    Parameters
    ----------
    pred_norm : the predictions' normalisation record (None: nothing to check)
    real_scale : detected scale of the real file ('counts', 'log1p', 'normalized')
    real_target : total the real counts were normalised to (None: median library size)
    real_norm : the real file's own normalisation record, if any
    """
    if pred_norm is None:
        return
    want = pred_norm["target_sum"]
    if real_scale != "log1p":
        if want is None or real_target != want:
            raise InputError(
                f"predictions are log1p of counts per {want or 'cell total of their input'} but "
                f"the real counts were normalised to "
                f"{real_target or 'their median library size'}; pass the real AnnData to "
                f"evaluate() (it matches the scale), or Reference(..., target_sum={want}).")
        return
    have = real_norm["target_sum"] if real_norm else None
    if want is not None and have is not None and not np.isclose(want, have):
        raise InputError(f"predictions are log1p of counts per {want:g} but the real file of "
                         f"counts per {have:g}; normalise both the same way.")


def log1p_matrix(adata: ad.AnnData, which: str, target_sum: float | None = None):
    """X as log1p. Counts are normalised to ``target_sum`` per cell (as read_experiment does),
    or to the median library size when it is None (cell-eval's rule, float32 as scanpy)."""
    x = adata.X
    scale = detect_scale(x)
    if target_sum is not None and scale != "log1p":
        x = normalize_log1p(x, scale, target_sum)
    elif scale == "counts":
        x = sp.csr_matrix(x, dtype=np.float32) if sp.issparse(x) else np.asarray(x, np.float32)
        totals = np.asarray(x.sum(axis=1, dtype=np.float64)).ravel()
        target = np.median(totals)
        f = np.divide(target, totals, out=np.zeros_like(totals), where=totals > 0)
        f = f.astype(np.float32)
        x = sp.csr_matrix(sp.diags(f) @ x) if sp.issparse(x) else x * f[:, None]
        if sp.issparse(x):
            x.data = np.log1p(x.data)
        else:
            x = np.log1p(x)
    if sp.issparse(x):
        x = sp.csr_matrix(x)
    vals = x.data if sp.issparse(x) else np.asarray(x)
    if vals.size and (not np.isfinite(vals).all() or vals.min() < 0):
        raise InputError(
            f"{which} expression has NaN/Inf or negative values; expected log1p-normalised "
            f"expression or raw counts."
        )
    return x
