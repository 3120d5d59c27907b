"""Run models over the folds of a split and score them against the cell-mean baseline.

For each fold and each test context, the real cells (test perturbations + that context's
controls) are evaluated once (:class:`~perturbcast.eval.Reference`) and every model predicts
the same number of cells per perturbation from the same controls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd

from .data.experiment import Experiment
from .data.splits import Split
from .eval.de import FdrMode
from .eval.evaluate import METRICS, UNSCORED, Reference, evaluate, vcc_score
from .models import BASELINES, get_model
from .utils import progress

REFERENCE_MODEL = "cell_mean"
CHOICE_KEYS = ("base", "inner_unit", "steps", "budget_steps", "stopped_early", "n_seeds")


@dataclass
class BenchmarkResult:
    """``summary``: one row per model (metric means over folds + ``score``);
    ``per_perturbation``: one row per (model, fold, context, perturbation)."""

    summary: pd.DataFrame
    per_perturbation: pd.DataFrame
    timings: dict[str, float]
    choices: pd.DataFrame | None = None  # per (model, fold): fit seconds, a set model's choices

    def best_baseline(self) -> str | None:
        base = self.summary[self.summary.model.isin(BASELINES)].assign(
            is_ref=lambda d: d.model == REFERENCE_MODEL,
            pd_=lambda d: d.pearson_delta.fillna(-np.inf))
        if base.empty:
            return None
        # ties on the score (e.g. nobody beats cell_mean): the reference, then pearson_delta
        return str(base.sort_values(["score", "is_ref", "pd_"]).model.iloc[-1])


def _real_adata(exp: Experiment, mask: np.ndarray) -> ad.AnnData:
    idx = np.flatnonzero(mask)
    obs = pd.DataFrame({exp.perturbation_key: exp.perturbations[idx]},
                       index=exp.adata.obs_names[idx].astype(str))
    return ad.AnnData(X=exp.rows(idx), obs=obs, var=pd.DataFrame(index=exp.genes))


def run_benchmark(
    exp: Experiment,
    split: Split,
    models: list[str] | tuple[str, ...] = BASELINES,
    seed: int = 0,
    fdr: FdrMode = "per_perturbation",
    edistance: bool = True,
    model_params: dict[str, dict] | None = None,
    show_progress: bool = True,
) -> BenchmarkResult:
    """Fit and evaluate each model on each fold; see :class:`BenchmarkResult`."""
    model_params = model_params or {}
    names = list(dict.fromkeys([REFERENCE_MODEL, *models]))
    rows, units, choices = [], [], []
    timings = {m: 0.0 for m in names}
    total = len(split.folds) * len(names)
    with progress(disable=not show_progress) as bar:
        task = bar.add_task("benchmark", total=total)
        for fold in split.folds:
            train = fold.train_mask(exp)
            test = fold.test_mask(exp)
            refs = {}
            for ctx in fold.test_contexts():
                in_ctx = exp.contexts == ctx
                real = _real_adata(exp, (test & in_ctx) | (exp.is_control & in_ctx))
                refs[ctx] = Reference(real, exp.perturbation_key, exp.control, fdr)
            conds = exp.conditions()
            conds = conds[[(p, c) in set(fold.test) for p, c in
                           zip(conds.perturbation, conds.context, strict=True)]]
            for name in names:
                bar.update(task, description=f"{fold.name}: {name}")
                t0 = time.perf_counter()
                model = get_model(name, seed=seed, **model_params.get(name, {}))
                model.fit(exp, train)
                summ = getattr(model, "training_summary", {})
                choices.append({"model": name, "fold": fold.name, "fit_s": time.perf_counter() - t0,
                                **{k: summ[k] for k in CHOICE_KEYS if k in summ}})
                for ctx, ref in refs.items():
                    c = conds[conds.context == ctx]
                    pred = model.predict(exp, c, include_controls=True)
                    res = evaluate(pred, ref, edistance=edistance)
                    units.append({"model": name, "fold": fold.name, "context": ctx,
                                  **res.summary})
                    table = res.per_perturbation.reset_index()
                    spread = pred.uns["perturbcast"].get("spread")  # ensembles (n_seeds > 1)
                    if spread:
                        table["spread"] = [spread.get(f"{p}|{ctx}") for p in table.perturbation]
                    table.insert(0, "context", ctx)
                    table.insert(0, "fold", fold.name)
                    table.insert(0, "model", name)
                    rows.append(table)
                timings[name] += time.perf_counter() - t0
                bar.advance(task)
    unit_df = pd.DataFrame(units)
    base = unit_df[unit_df.model == REFERENCE_MODEL].set_index(["fold", "context"])
    unit_df["score"] = [
        vcc_score(r, base.loc[(r["fold"], r["context"])].to_dict())[0]
        for r in unit_df.to_dict("records")
    ]
    metric_cols = [m for m in METRICS if m in unit_df] + ["score"]
    per_fold = unit_df.groupby(["model", "fold"], sort=False)[metric_cols].mean()
    summary = per_fold.groupby(level="model", sort=False).mean().reset_index()
    summary = summary[["model", *metric_cols]]
    per_pert = pd.concat(rows, ignore_index=True)
    per_pert = per_pert[[c for c in per_pert.columns if c not in UNSCORED] +
                        [c for c in UNSCORED if c in per_pert.columns]]
    return BenchmarkResult(summary, per_pert, timings, pd.DataFrame(choices))
