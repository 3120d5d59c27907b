"""Differential-expression agreement metrics (cell-eval 0.8.x definitions).

Like cell-eval, fold changes and FDRs are compared as float32; 'significant' is FDR < 0.05;
top genes are the significant ones ranked by |log2 fold change| (ties in gene order).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from .de import DEResult

FDR_THRESHOLD = 0.05


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).astype(np.float64)


def _top_genes(de: DEResult, i: int, fdr: float) -> np.ndarray:
    q = _f32(de.fdr[i])
    sig = np.flatnonzero(q < fdr)
    score = np.abs(_f32(de.log2_fold_change[i]))[sig]
    return sig[np.argsort(-score, kind="stable")]


def overlap(real: DEResult, pred: DEResult, k: int | None, metric: str = "overlap",
            fdr: float = FDR_THRESHOLD) -> dict[str, float]:
    """overlap_at_k (recall of real top-k) or precision_at_k; k=None means N (all significant)."""
    out = {}
    for i, p in enumerate(real.perturbations):
        r, q = _top_genes(real, i, fdr), _top_genes(pred, i, fdr)
        if metric == "overlap":
            k_eff = min(r.size if not k else k, r.size)
        else:
            k_eff = min(q.size if not k else k, q.size)
        out[str(p)] = 0.0 if k_eff == 0 else np.intersect1d(r[:k_eff], q[:k_eff]).size / k_eff
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2:
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def _sig(de: DEResult, fdr: float) -> np.ndarray:
    return _f32(de.fdr) < fdr


def direction_match(real: DEResult, pred: DEResult, fdr: float = FDR_THRESHOLD):
    sig = _sig(real, fdr)
    lr, lp = np.sign(_f32(real.log2_fold_change)), np.sign(_f32(pred.log2_fold_change))
    return {str(p): float((lr[i, sig[i]] == lp[i, sig[i]]).mean())
            for i, p in enumerate(real.perturbations) if sig[i].any()}


def spearman_lfc_sig(real: DEResult, pred: DEResult, fdr: float = FDR_THRESHOLD):
    sig = _sig(real, fdr)
    lr, lp = _f32(real.log2_fold_change), _f32(pred.log2_fold_change)
    return {str(p): _spearman(lr[i, sig[i]], lp[i, sig[i]])
            for i, p in enumerate(real.perturbations) if sig[i].any()}


def sig_genes_recall(real: DEResult, pred: DEResult, fdr: float = FDR_THRESHOLD):
    sr, sp_ = _sig(real, fdr), _sig(pred, fdr)
    return {str(p): float((sr[i] & sp_[i]).sum() / sr[i].sum())
            for i, p in enumerate(real.perturbations) if sr[i].any()}


def spearman_sig(real: DEResult, pred: DEResult, fdr: float = FDR_THRESHOLD) -> float:
    """Spearman correlation of the number of significant genes (perturbations with >= 1 real)."""
    nr, np_ = _sig(real, fdr).sum(1), _sig(pred, fdr).sum(1)
    have = nr > 0
    if not have.any():
        return 1.0
    return _spearman(nr[have].astype(float), np_[have].astype(float))


def nsig_counts(real: DEResult, pred: DEResult, fdr: float = FDR_THRESHOLD):
    nr, np_ = _sig(real, fdr).sum(1), _sig(pred, fdr).sum(1)
    real_d = {str(p): float(v) for p, v in zip(real.perturbations, nr, strict=True)}
    pred_d = {str(p): float(v) for p, v in zip(real.perturbations, np_, strict=True)}
    return real_d, pred_d
