"""Differential expression of every perturbation vs control: Mann-Whitney U + BH FDR.

The test matches cell-eval 0.8.x (pdex with epsilon=0): two-sided asymptotic Mann-Whitney U with
tie correction and continuity correction; log2 fold change of geometric-mean pseudobulks
(expm1(mean(log1p x))), with 0/0 -> 0; Benjamini-Hochberg FDR within each perturbation (what
pdex >= 0.2.5 does, so the cell-eval-compatible default) or over all tests ('global').
Ranking is vectorised over genes: the controls are sorted once; each perturbation's cells are
placed among them by binary search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from scipy.special import erfc

FdrMode = Literal["per_perturbation", "global"]


@dataclass
class DEResult:
    """DE of each perturbation vs control; arrays have shape (n_perturbations, n_genes)."""

    perturbations: np.ndarray
    genes: np.ndarray
    log2_fold_change: np.ndarray
    p_value: np.ndarray
    fdr: np.ndarray
    statistic: np.ndarray
    target_mean: np.ndarray
    ref_mean: np.ndarray

    def to_frame(self) -> pd.DataFrame:
        """Long table with pdex's columns (target, feature, ..., fdr)."""
        n_p, n_g = self.log2_fold_change.shape
        return pd.DataFrame({
            "target": np.repeat(self.perturbations, n_g),
            "feature": np.tile(self.genes, n_p),
            "target_mean": self.target_mean.ravel(),
            "ref_mean": np.tile(self.ref_mean, n_p) if self.ref_mean.ndim == 1
            else self.ref_mean.ravel(),
            "log2_fold_change": self.log2_fold_change.ravel(),
            "p_value": self.p_value.ravel(),
            "statistic": self.statistic.ravel(),
            "fdr": self.fdr.ravel(),
        })


class RankedReference:
    """Control cells sorted once per gene, for fast Mann-Whitney U tests of many groups.

    Parameters
    ----------
    ref : ndarray, shape (n2, n_genes)
    """

    def __init__(self, ref: np.ndarray) -> None:
        r = torch.from_numpy(np.ascontiguousarray(np.asarray(ref, dtype=np.float64).T))
        self.sorted = torch.sort(r, dim=1).values.contiguous()  # (n_genes, n2)
        self.n2 = r.shape[1]
        start, end = _runs(self.sorted)
        self.run_end = end + 1  # index just past the run of equal values
        b = (end - start + 1).double()
        self.tie_term = (b * b - 1.0).sum(dim=1)  # sum over runs of b^3 - b

    def test(self, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """U statistic and two-sided p-value of ``group`` (n1, n_genes) against the reference.

        U1 = sum over group cells of (#ref < x + 0.5 #ref == x); the tie term of the pooled
        sample adds, for each distinct group value v (a copies, b in the reference),
        (a+b)^3 - (a+b) - (b^3 - b).
        """
        g = torch.from_numpy(np.ascontiguousarray(np.asarray(group, dtype=np.float64).T))
        g = torch.sort(g, dim=1).values.contiguous()  # (n_genes, n1)
        n1 = g.shape[1]
        lo = torch.searchsorted(self.sorted, g, right=False)
        at = lo.clamp(max=self.n2 - 1)
        equal = torch.gather(self.sorted, 1, at) == g
        hi = torch.where(equal, torch.gather(self.run_end, 1, at), lo)
        b = (hi - lo).double()
        u1 = (lo.double() + 0.5 * b).sum(dim=1)
        start, end = _runs(g)
        a = (end - start + 1).double()
        t = a + b
        extra = ((t * t * t - t) - (b * b * b - b)) / a  # each run counted a times
        tie_term = self.tie_term + extra.sum(dim=1)
        r1 = u1.numpy() + n1 * (n1 + 1.0) / 2.0
        return _p_from_rank_sum(r1, n1, self.n2, tie_term.numpy())


def _runs(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last index of each element's run of equal values in row-sorted ``s``."""
    n = s.shape[1]
    pos = torch.arange(n, dtype=torch.int64).expand_as(s)
    first = torch.ones_like(s, dtype=torch.bool)
    first[:, 1:] = s[:, 1:] != s[:, :-1]
    last = torch.ones_like(first)
    last[:, :-1] = first[:, 1:]
    start = torch.where(first, pos, 0).cummax(dim=1).values
    end = torch.where(last, pos, n).flip(1).cummin(dim=1).values.flip(1)
    return start, end


def mann_whitney_u(group: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided asymptotic Mann-Whitney U test, column by column.

    Parameters
    ----------
    group : ndarray, shape (n1, n_genes)
    ref : ndarray, shape (n2, n_genes)

    Returns
    -------
    u1 : ndarray, shape (n_genes,), U statistic of ``group``
    p : ndarray, shape (n_genes,), with tie and continuity correction (scipy's asymptotic method)
    """
    return RankedReference(ref).test(group)


def _p_from_rank_sum(r1, n1, n2, tie_term):
    n = n1 + n2
    u1 = r1 - n1 * (n1 + 1.0) / 2.0
    u = np.maximum(u1, n1 * n2 - u1)
    mu = n1 * n2 / 2.0
    s_sq = n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (u - mu - 0.5) / np.sqrt(s_sq)
        p = np.clip(erfc(z / np.sqrt(2.0)), 0.0, 1.0)
    p = np.where(s_sq <= 0.0, 1.0, p)
    return u1, p


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values along the last axis (scipy's false_discovery_control)."""
    p = np.asarray(p, dtype=np.float64)
    m = p.shape[-1]
    if m == 0:
        return p.copy()
    order = np.argsort(p, axis=-1, kind="stable")
    ps = np.take_along_axis(p, order, axis=-1) * (m / np.arange(1, m + 1))
    ps = np.minimum.accumulate(ps[..., ::-1], axis=-1)[..., ::-1]
    out = np.empty_like(ps)
    np.put_along_axis(out, order, ps, axis=-1)
    return np.clip(out, 0.0, 1.0)


def group_indices(labels: np.ndarray, groups) -> list[np.ndarray]:
    """Row indices of each of ``groups`` in ``labels`` (empty for an absent group)."""
    codes, uniques = pd.factorize(np.asarray(labels))
    code_of = {u: i for i, u in enumerate(uniques)}
    return [np.flatnonzero(codes == code_of.get(g, -2)) for g in groups]


def differential_expression(
    x,
    labels: np.ndarray,
    control: str,
    genes: np.ndarray,
    fdr: FdrMode = "per_perturbation",
    perturbations: np.ndarray | None = None,
    epsilon: float = 0.0,
) -> DEResult:
    """DE of each perturbation in ``labels`` vs the ``control`` cells.

    Parameters
    ----------
    x : ndarray or sparse matrix, shape (n_cells, n_genes), log1p expression
    labels : ndarray of str, shape (n_cells,)
    fdr : 'per_perturbation' (cell-eval 0.8.x) or 'global' (BH over all tests)
    perturbations : the order of the output rows (default: sorted non-control labels)
    epsilon : pseudocount in log2((target + eps) / (ref + eps)); 0 as cell-eval (genes absent
        from every control cell then get infinite fold changes)
    """
    labels = np.asarray(labels).astype(str)
    if perturbations is None:
        perturbations = np.array(sorted(set(labels) - {control}))
    *group_idx, ref_idx = group_indices(labels, [*perturbations, control])
    ref = _dense(x[ref_idx])
    ref_mean = np.expm1(ref.mean(axis=0, dtype=np.float64))
    ranked = RankedReference(ref)
    n_p, n_g = len(perturbations), ref.shape[1]
    lfc, pv, stat, tmean = (np.zeros((n_p, n_g)) for _ in range(4))
    for i, idx in enumerate(group_idx):
        grp = _dense(x[idx])
        tmean[i] = np.expm1(grp.mean(axis=0, dtype=np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            lfc[i] = np.log2((tmean[i] + epsilon) / (ref_mean + epsilon))
        stat[i], pv[i] = ranked.test(grp)
    lfc[np.isnan(lfc)] = 0.0
    if fdr == "global":
        q = benjamini_hochberg(pv.ravel()).reshape(pv.shape)
    elif fdr == "per_perturbation":
        q = benjamini_hochberg(pv)
    else:
        raise ValueError(f"fdr must be 'per_perturbation' or 'global', not {fdr!r}")
    return DEResult(np.asarray(perturbations), np.asarray(genes).astype(str), lfc, pv, q, stat,
                    tmean, ref_mean)


def _dense(block) -> np.ndarray:
    if hasattr(block, "toarray"):
        block = block.toarray()
    return np.asarray(block)
