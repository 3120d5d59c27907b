"""Who won a benchmark, by how much, and whether that is more than the seed-to-seed spread.

Used by the demo, ``perturbcast benchmark``, report.md and ``benchmarks/bench_tasks.py`` so
they all say the same thing. A learned model is compared with the best baseline that had the
same gene table (``embeddings``) as it, or that takes none: a baseline denied the table the
learned model got would make the comparison unfair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

REFERENCE_MODEL = "cell_mean"


def _table(value) -> str | None:
    """A summary's ``embeddings`` cell as a table name, or None (takes none)."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return None
    return str(value)


def matched_best_baseline(summary: pd.DataFrame, baselines: Sequence[str],
                          model: str | None = None) -> str | None:
    """The baseline with the highest VCC score among the eligible ones.

    Eligible: baselines that take no gene table, or whose table equals ``model``'s (``model``
    None: equals any learned model's; all baselines when no learned model has a table). Ties
    (e.g. nobody beats cell_mean) go to cell_mean, then to the higher pearson_delta, then to
    the simpler model (earlier in ``baselines``; e.g. context_mean over additive where there
    are no combinations and they predict the same), whatever the row order.
    """
    tables = {r["model"]: _table(r.get("embeddings")) for r in summary.to_dict("records")}
    if model is not None:
        wanted = {tables.get(model)} - {None}
    else:
        wanted = {t for m, t in tables.items() if m not in baselines} - {None}
    base = summary[summary.model.isin(baselines)]
    if wanted:
        base = base[[tables[m] is None or tables[m] in wanted for m in base.model]]
    if base.empty:
        return None
    order = list(baselines)
    base = base.assign(is_ref=base.model == REFERENCE_MODEL,
                       pd_=base.pearson_delta.fillna(-np.inf),
                       simpler=[-order.index(m) for m in base.model])
    return str(base.sort_values(["score", "is_ref", "pd_", "simpler"]).model.iloc[-1])


#: The metrics besides the VCC score that a win must not give up (the field reads them too):
#: name -> True when higher is better.
SIDE_METRICS = {"pearson_delta": True, "mae": False}


def worse_on(s: pd.DataFrame, model: str, baseline: str) -> list[str]:
    """The :data:`SIDE_METRICS` on which ``model`` is worse than ``baseline`` by more than the
    model's seed sd of that metric (any amount when the sd was not measured)."""
    out = []
    for metric, higher in SIDE_METRICS.items():
        if metric not in s or not np.isfinite(s[metric][model]) or not np.isfinite(
                s[metric][baseline]):
            continue
        sd = s[f"{metric}_sd"][model] if f"{metric}_sd" in s else np.nan
        sd = float(sd) if np.isfinite(sd) else 0.0
        gap = (s[metric][baseline] - s[metric][model]) * (1 if higher else -1)
        if gap > sd:
            out.append(metric)
    return out


def compare_to_baselines(summary: pd.DataFrame, baselines: Sequence[str]) -> pd.DataFrame:
    """One row per learned model: its VCC score, its best matched baseline's, the difference,
    the seed spread (sd of the model's score over seeds; NaN with one seed), whether the
    difference exceeds that spread (None when not measured), and the side metrics
    (pearson_delta, mae) on which the model is worse than that baseline (``worse_on``, comma
    separated; a VCC win with both worse is a nominal win).

    Returns
    -------
    DataFrame with columns model, n_seeds, score, score_sd, baseline, baseline_score,
    difference, exceeds_spread, worse_on
    """
    s = summary.set_index("model")
    out = []
    for m in s.index:
        if m in baselines:
            continue
        b = matched_best_baseline(summary, baselines, m)
        if b is None:
            continue
        n = int(s.n_seeds[m]) if "n_seeds" in s else 1
        sd = float(s.score_sd[m]) if "score_sd" in s else float("nan")
        diff = float(s.score[m] - s.score[b])
        exceeds = None if n < 2 or np.isnan(sd) else bool(abs(diff) > sd)
        out.append({"model": m, "n_seeds": n, "score": float(s.score[m]), "score_sd": sd,
                    "baseline": b, "baseline_score": float(s.score[b]), "difference": diff,
                    "exceeds_spread": exceeds, "worse_on": ",".join(worse_on(s, m, b))})
    return pd.DataFrame(out, columns=["model", "n_seeds", "score", "score_sd", "baseline",
                                      "baseline_score", "difference", "exceeds_spread",
                                      "worse_on"])


def side_note(summary: pd.DataFrame, row: dict) -> str:
    """For a model that scores above its baseline: '' when it is not worse on pearson_delta or
    mae, else a clause naming them (both worse: 'a nominal win')."""
    worse = [w for w in str(row.get("worse_on") or "").split(",") if w]
    if not worse or row["difference"] <= 0:
        return ""
    s = summary.set_index("model")
    m, b = row["model"], row["baseline"]
    figs = " and ".join(f"{w} ({s[w][m]:.4g} vs {s[w][b]:.4g})" for w in worse)
    if len(worse) == len(SIDE_METRICS):
        return f" A nominal win only: its {figs} are worse than {b}'s."
    return f" But its {figs} is worse than {b}'s."


def _spread(row: dict) -> str:
    if row["exceeds_spread"] is None:
        return "1 seed: spread not measured; use --seeds 0,1,2"
    return f"seed spread ±{row['score_sd']:.3f} over {row['n_seeds']} seeds"


def bases_not_run(summary: pd.DataFrame, fits: pd.DataFrame | None, model: str) -> str:
    """' Its base ...' when ``model`` (``base=auto``) stood on a baseline the benchmark did not
    run: then part of its margin may be that baseline's, not the network's."""
    if fits is None or "base" not in fits or fits.empty:
        return ""
    chosen = fits.loc[fits.model == model, "base"].dropna().astype(str)
    missing = sorted(set(chosen) - set(summary.model) - {"none"})
    if not missing:
        return ""
    counts = ", ".join(f"{b} in {int((chosen == b).sum())} of {len(chosen)} fits"
                       for b in missing)
    return (f" Its base ({counts}) was not run here, so part of that margin may be the "
            f"base's, not the network's: add {','.join(missing)} to --models.")


def verdict_line(summary: pd.DataFrame, baselines: Sequence[str],
                 fits: pd.DataFrame | None = None) -> str:
    """A plain-words verdict, e.g. ``transition beats the best baseline additive by +0.120 VCC
    score (seed spread ±0.030 over 3 seeds; the difference exceeds it)``; with ``fits`` (the
    benchmark's, column ``base``), a winner whose chosen base was not run says so."""
    comp = compare_to_baselines(summary, baselines)
    if comp.empty:
        best = matched_best_baseline(summary, baselines)
        if best is None:
            return "no baseline was run, so there is nothing to compare with."
        score = float(summary.set_index("model").score[best])
        return f"baselines only: the best is {best} ({score:.3f} VCC score vs cell_mean)."
    row = comp.sort_values(["difference", "score"]).iloc[-1].to_dict()
    m, b, d = row["model"], row["baseline"], row["difference"]
    if d > 0:
        if row["exceeds_spread"] is False:
            return (f"{m} scores {d:+.3f} VCC above the best baseline {b}, within the "
                    f"{_spread(row)}: not a clear win." + bases_not_run(summary, fits, m))
        tail = "; the difference exceeds it" if row["exceeds_spread"] else ""
        return (f"{m} beats the best baseline {b} by {d:+.3f} VCC score ({_spread(row)}{tail})."
                + side_note(summary, row) + bases_not_run(summary, fits, m))
    tail = ""
    if row["exceeds_spread"] is not None:
        tail = "; the gap exceeds it" if row["exceeds_spread"] else "; within it"
    return (f"no learned model beats the best baseline {b} ({row['baseline_score']:.3f} VCC "
            f"score): the closest, {m}, is {d:+.3f} ({_spread(row)}{tail}).")


# a spread below this share of the median mae (and below AGREE_ATOL, float32 rounding of
# log1p values) is the members agreeing up to rounding
AGREE_RTOL = 1e-4
AGREE_ATOL = 1e-6


@dataclass(frozen=True)
class SpreadCalibration:
    """Whether an ensemble's members' spread ranks which predictions are wrong.

    Attributes
    ----------
    model : the ensemble model's name
    n : predictions (seed, fold, context, perturbation rows) compared
    informative : predictions with a spread above rounding (the larger of ``AGREE_RTOL`` x
        the median mae and ``AGREE_ATOL``)
    spearman : Spearman(spread, mae) over the ``n`` predictions (spreads at rounding level set
        to 0), or NaN when fewer than 3 are informative or the mae is constant
    """

    model: str
    n: int
    informative: int
    spearman: float

    def line(self) -> str:
        """One plain-words line for tables and logs."""
        if self.informative < 3:
            return (f"{self.model}: members agree on {self.n - self.informative} of {self.n} "
                    "predictions (spread at rounding level): no spread to calibrate")
        if np.isnan(self.spearman):
            return (f"{self.model}: the mae is the same for all {self.n} predictions: nothing "
                    "to rank")
        return (f"{self.model}: Spearman(ensemble spread, mae) over {self.n} predictions = "
                f"{self.spearman:+.3f} ({self.informative} with a spread above rounding)")


def spread_calibration(per_perturbation: pd.DataFrame) -> list[SpreadCalibration]:
    """Per ensemble model (rows with a ``spread``, ``n_seeds`` > 1), the calibration figure.

    Parameters
    ----------
    per_perturbation : a benchmark's rows, one per (model, seed, fold, context,
        perturbation), with ``mae`` and (ensembles) ``spread``

    When fewer than 3 predictions have a spread above rounding (e.g. every fold kept none of
    the networks' correction, ``shrink=0``, so all members predict the base), no correlation
    is given: a Spearman over rounding noise is not a calibration figure. Models whose spread
    is exactly 0 everywhere (one member) are left out.
    """
    from scipy.stats import spearmanr

    out: list[SpreadCalibration] = []
    if "spread" not in per_perturbation:
        return out
    for m, rows in per_perturbation.dropna(subset=["spread", "mae"]).groupby("model"):
        spread = rows["spread"].to_numpy(float)
        if len(rows) < 3 or not np.any(spread > 0):
            continue
        tol = max(AGREE_RTOL * float(np.median(rows["mae"])), AGREE_ATOL)
        informative = int(np.sum(spread > tol))
        rho = float("nan")
        if informative >= 3 and rows["mae"].nunique() > 1:
            rho = float(spearmanr(np.where(spread > tol, spread, 0.0), rows["mae"]).statistic)
        out.append(SpreadCalibration(str(m), len(rows), informative, rho))
    return out
