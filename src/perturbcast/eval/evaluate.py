"""Evaluate predicted vs real cells: every metric per perturbation, summary and VCC score.

Numbers equal cell-eval 0.8.x on the same pred/real files (see tests/test_celleval_parity.py),
computed natively and vectorised. The real side (pseudobulks, DE, energy distances) is computed
once in a :class:`Reference` and reused for every model evaluated against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..data.preprocess import detect_scale
from ..errors import InputError, preview
from . import de_metrics, metrics
from .de import DEResult, FdrMode, differential_expression, group_indices
from .scale import check_same_scale, log1p_matrix, normalization_of, target_sum_for

LOWER_BETTER = ("mae", "mse", "mae_delta", "mse_delta")
VCC_METRICS = ("mae", "discrimination_score_l1", "overlap_at_N")
METRICS = (
    "pearson_delta", "mae", "mse", "mae_delta", "mse_delta",
    "discrimination_score_l1", "discrimination_score_l2", "discrimination_score_cosine",
    "overlap_at_N", "overlap_at_50", "overlap_at_100", "overlap_at_200", "overlap_at_500",
    "precision_at_N", "de_direction_match", "de_spearman_lfc_sig", "de_spearman_sig",
    "de_sig_genes_recall", "pearson_edistance",
)
UNSCORED = ("de_nsig_counts_real", "de_nsig_counts_pred")


def _group_means(x, index: list[np.ndarray]) -> np.ndarray:
    """Mean (float64) of the rows of each group, shape (len(index), n_genes)."""
    out = np.full((len(index), x.shape[1]), np.nan)
    for i, idx in enumerate(index):
        if idx.size:
            out[i] = np.asarray(x[idx].mean(axis=0, dtype=np.float64)).ravel()
    return out


def _cells(x, groups, index: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Dense cells of each group, keyed by group name."""
    out = {}
    for g, idx in zip(groups, index, strict=True):
        block = x[idx]
        out[g] = block.toarray() if sp.issparse(block) else np.asarray(block)
    return out


@dataclass
class Reference:
    """The real side of an evaluation, computed once.

    Parameters
    ----------
    real : AnnData, real cells: perturbed cells plus control cells
    perturbation_key, control : obs column and control label
    fdr : 'per_perturbation' (cell-eval 0.8.x) or 'global'
    epsilon : pseudocount of the DE log fold changes (0: cell-eval)
    target_sum : raw counts are normalised to this total per cell + log1p (as
        :func:`~perturbcast.read_experiment` does); None: to the median library size, as
        cell-eval does. Log1p input is used as is.
    """

    real: ad.AnnData
    perturbation_key: str
    control: str
    fdr: FdrMode = "per_perturbation"
    epsilon: float = 0.0
    target_sum: float | None = None
    scale: str = field(init=False)
    normalization: dict | None = field(init=False, repr=False)
    x: object = field(init=False, repr=False)
    labels: np.ndarray = field(init=False, repr=False)
    perts: np.ndarray = field(init=False)
    genes: np.ndarray = field(init=False, repr=False)
    groups: np.ndarray = field(init=False, repr=False)
    index: list = field(init=False, repr=False)
    means: np.ndarray = field(init=False, repr=False)
    ctrl_mean: np.ndarray = field(init=False, repr=False)
    de: DEResult = field(init=False, repr=False)
    _cells: dict | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.fdr not in ("per_perturbation", "global"):
            raise InputError(f"fdr {self.fdr!r} is not one of per_perturbation, global "
                             f"(--fdr).")
        if self.perturbation_key not in self.real.obs:
            raise InputError(
                f"obs column {self.perturbation_key!r} not found in the real data; columns: "
                f"{preview(self.real.obs.columns)}."
            )
        self.labels = self.real.obs[self.perturbation_key].astype(str).to_numpy()
        if self.control not in set(self.labels):
            raise InputError(
                f"control {self.control!r} not found in the real data's "
                f"{self.perturbation_key!r}; cell-eval needs control cells in both files."
            )
        self.genes = np.asarray(self.real.var_names.astype(str))
        self.scale = detect_scale(self.real.X)
        self.normalization = normalization_of(self.real)
        self.x = log1p_matrix(self.real, "real", self.target_sum)
        self.perts = np.array(sorted(set(self.labels) - {self.control}))
        if self.perts.size == 0:
            raise InputError("the real data has no perturbed cells to evaluate.")
        self.groups = np.r_[self.perts, [self.control]]
        self.index = group_indices(self.labels, self.groups)
        means = _group_means(self.x, self.index)
        self.means, self.ctrl_mean = means[:-1], means[-1]
        self.de = differential_expression(self.x, self.labels, self.control, self.genes,
                                          fdr=self.fdr, perturbations=self.perts,
                                          epsilon=self.epsilon)

    def cells(self) -> dict[str, np.ndarray]:
        if self._cells is None:
            self._cells = _cells(self.x, self.groups, self.index)
        return self._cells


@dataclass
class EvalResult:
    """Per-perturbation metrics, their summary (mean over perturbations) and the DE tables."""

    per_perturbation: pd.DataFrame
    summary: dict[str, float]
    de_real: DEResult | None  # None when scored per context: see ``by_context``
    de_pred: DEResult | None
    by_context: dict[str, EvalResult] = field(default_factory=dict)

    def score(self, baseline: EvalResult | dict, metric_names=VCC_METRICS) -> float:
        return vcc_score(self.summary, baseline if isinstance(baseline, dict)
                         else baseline.summary, metric_names)[0]


class ReferenceCache:
    """The real side of evaluations (a :class:`Reference` per context and setting, with its DE
    tables), built on first use and reused for later predictions scored against the same real
    AnnData object (e.g. ``evaluate --baseline``). Bound to that object: passing another one
    raises; do not modify the object in place between calls."""

    def __init__(self) -> None:
        self._real: ad.AnnData | None = None
        self._refs: dict[tuple, Reference] = {}

    def get(self, real: ad.AnnData, key: tuple, build) -> Reference:
        if self._real is None:
            self._real = real
        elif self._real is not real:
            raise ValueError("this ReferenceCache holds another real AnnData's references; use "
                             "one cache per real data object.")
        if key not in self._refs:
            self._refs[key] = build()
        return self._refs[key]

    def __len__(self) -> int:
        return len(self._refs)


def evaluate(
    pred: ad.AnnData,
    real: ad.AnnData | Reference,
    perturbation_key: str | None = None,
    control: str | None = None,
    fdr: FdrMode = "per_perturbation",
    edistance: bool = True,
    epsilon: float = 0.0,
    context_key: str | None = None,
    references: ReferenceCache | None = None,
) -> EvalResult:
    """Score predicted cells against real cells with cell-eval's metrics.

    Parameters
    ----------
    pred, real : AnnData with the same genes; both hold the perturbed cells and control cells
        (cell-eval convention); log1p is used as is. Raw counts in ``real`` are normalised like
        the predictions' input when ``pred`` records it (``uns["perturbcast"]``, written by
        ``predict``), else to the median library size as cell-eval does.
    real : or a :class:`Reference` built once and reused for several predictions
    perturbation_key, control : obs column and control label (not needed with a Reference)
    edistance : compute pearson_edistance (needs cell-level pairwise distances)
    epsilon : pseudocount of the DE log fold changes (0: cell-eval; the CLI's ``--epsilon``)
    context_key : obs column of contexts in both files: each context is scored on its own
        cells and controls. Default: the predictions' recorded context key, or ``context``,
        when both files have it; otherwise contexts are pooled (cell-eval).
    references : a :class:`ReferenceCache` kept between calls with the same ``real`` (e.g. a
        model and its reference model): the real side (DE tables) is built once and reused

    Returns
    -------
    EvalResult with ``per_perturbation`` (rows: perturbations, or (perturbation, context) with a
    ``context`` column; columns: metrics) and ``summary`` (metric -> mean over the rows; NaN
    propagates like cell-eval).
    """
    pred_norm = normalization_of(pred)
    if not isinstance(real, Reference):
        if perturbation_key is None or control is None:
            raise InputError("evaluate() needs perturbation_key and control.")
        from .by_context import context_column, evaluate_by_context

        ckey = context_column(pred, real, context_key)
        if ckey is not None:
            return evaluate_by_context(pred, real, perturbation_key, control, ckey, fdr,
                                       epsilon, edistance, references)
        adata, target = real, target_sum_for(pred_norm, real)
        key = (None, target, None, perturbation_key, control, fdr, epsilon)
        build = partial(Reference, adata, perturbation_key, control, fdr, epsilon, target)
        real = build() if references is None else references.get(adata, key, build)
    check_same_scale(pred_norm, real.scale, real.target_sum, real.normalization)
    res, de_pred = score(pred, real, edistance)
    return EvalResult(result_table(res, real.perts), summarise([res]), real.de, de_pred)


def score(pred: ad.AnnData, real: Reference, edistance: bool = True
          ) -> tuple[dict[str, dict[str, float]], DEResult]:
    """Every metric of ``pred`` against ``real``: {metric: {perturbation: value}}, and the
    predictions' DE table."""
    key, ctrl = real.perturbation_key, real.control
    if key not in pred.obs:
        raise InputError(f"obs column {key!r} not found in the predictions.")
    pred = _align_genes(pred, real.genes)
    plabels = pred.obs[key].astype(str).to_numpy()
    missing = sorted(set(real.perts) - set(plabels))
    extra = sorted(set(plabels) - set(real.perts) - {ctrl})
    if missing or extra or ctrl not in set(plabels):
        what = (f"missing {preview(missing, 5)}" if missing else
                f"unexpected {preview(extra, 5)}" if extra else f"no control {ctrl!r}")
        fix = ("predict every real perturbation, or score the predicted ones alone "
               "(evaluate --only-predicted)" if missing else
               "predict only perturbations the real data has" if extra else
               "include control cells in the predictions (predict --include-controls)")
        raise InputError(f"predictions and real data differ in perturbations ({what}); {fix}.")
    px = log1p_matrix(pred, "predicted")
    pindex = group_indices(plabels, real.groups)
    pm = _group_means(px, pindex)
    pair = metrics.PairArrays(real.perts, real.genes, real.means, pm[:-1], real.ctrl_mean, pm[-1])
    de_pred = differential_expression(px, plabels, ctrl, real.genes, fdr=real.fdr,
                                      perturbations=real.perts, epsilon=real.epsilon)
    de_real = real.de
    res: dict[str, dict[str, float]] = {
        "pearson_delta": metrics.pearson_delta(pair),
        "mae": metrics.mae(pair),
        "mse": metrics.mse(pair),
        "mae_delta": metrics.mae_delta(pair),
        "mse_delta": metrics.mse_delta(pair),
    }
    for dist in ("l1", "l2", "cosine"):
        res[f"discrimination_score_{dist}"] = metrics.discrimination_score(pair, dist)
    for k in (None, 50, 100, 200, 500):
        res[f"overlap_at_{k or 'N'}"] = de_metrics.overlap(de_real, de_pred, k, "overlap")
    res["precision_at_N"] = de_metrics.overlap(de_real, de_pred, None, "precision")
    res["de_direction_match"] = de_metrics.direction_match(de_real, de_pred)
    res["de_spearman_lfc_sig"] = de_metrics.spearman_lfc_sig(de_real, de_pred)
    spearman_sig = de_metrics.spearman_sig(de_real, de_pred)
    res["de_spearman_sig"] = {str(p): spearman_sig for p in real.perts}
    res["de_sig_genes_recall"] = de_metrics.sig_genes_recall(de_real, de_pred)
    if edistance:
        rc = real.cells()
        pc = _cells(px, real.groups, pindex)
        e = metrics.pearson_edistance(rc, pc, real.perts, rc[ctrl], pc[ctrl])
        res["pearson_edistance"] = {str(p): e for p in real.perts}
    res["de_nsig_counts_real"], res["de_nsig_counts_pred"] = de_metrics.nsig_counts(de_real,
                                                                                      de_pred)
    return res, de_pred


def result_table(res: dict[str, dict[str, float]], perts: np.ndarray) -> pd.DataFrame:
    """Per-perturbation table (index ``perturbation``, one column per metric)."""
    table = pd.DataFrame({m: pd.Series(v, dtype=float) for m, v in res.items()})
    table = table.reindex(perts.astype(str))
    table.index.name = "perturbation"
    return table


def summarise(results: list[dict[str, dict[str, float]]]) -> dict[str, float]:
    """Mean of each metric over every (perturbation[, context]) value it has; NaN propagates
    and absent values are skipped, as cell-eval's aggregate."""
    out = {}
    for m in results[0]:
        vals = [v for r in results for v in r[m].values()]
        out[m] = float(np.mean(vals)) if vals else float("nan")
    return out


def _align_genes(pred: ad.AnnData, genes: np.ndarray) -> ad.AnnData:
    pg = np.asarray(pred.var_names.astype(str))
    if pg.shape == genes.shape and (pg == genes).all():
        return pred
    if set(pg) >= set(genes):
        return pred[:, list(genes)]
    miss = sorted(set(genes) - set(pg))
    raise InputError(f"predictions lack {len(miss)} real genes ({preview(miss, 5)}); predict "
                     f"on the same genes as the real data.")


def vcc_score(user: dict, base: dict, metric_names=VCC_METRICS) -> tuple[float, dict[str, float]]:
    """VCC score: each metric normalised against the baseline, NaN -> 0, clipped at 0, averaged.

    Lower-is-better metrics: 1 - user/base; higher-is-better: (user - base) / (1 - base).
    """
    parts = {}
    for m in metric_names:
        u, b = float(user[m]), float(base[m])
        with np.errstate(divide="ignore", invalid="ignore"):
            v = 1.0 - np.float64(u) / b if m in LOWER_BETTER else (np.float64(u) - b) / (1.0 - b)
        parts[m] = float(max(0.0, 0.0 if np.isnan(v) else v))
    return float(np.mean(list(parts.values()))), parts
