"""Run models over the folds of a split and score them against the cell-mean baseline.

For each fold and each test context, the real cells (test perturbations + that context's
controls) are evaluated once (:class:`~perturbcast.eval.Reference`) and every model predicts
the same number of cells per perturbation from the same controls. Learned (non-baseline)
models are fitted once per seed; baselines have a deterministic fit and run once.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import pandas as pd

from .data.experiment import Experiment
from .data.preprocess import uns_record
from .data.reading import select_genes
from .data.splits import Fold, Split
from .errors import InputError
from .eval.de import FdrMode
from .eval.evaluate import METRICS, UNSCORED, Reference, evaluate, vcc_score
from .eval.report_data import ReportData
from .models import BASELINES, MODELS, check_params, get_model
from .models.base import PerturbationModel
from .repeated_warnings import WarnOnce
from .utils import progress
from .verdict import (
    REFERENCE_MODEL,
    SpreadCalibration,
    compare_to_baselines,
    matched_best_baseline,
    spread_calibration,
    verdict_line,
)

# a model's training choices (``training_summary``), added as columns of ``fits``
CHOICE_KEYS = ("base", "inner_unit", "shrink", "shrink_n_probes", "shrink_held_out", "steps",
               "budget_steps", "stopped_early", "n_seeds", "blend_weights")


@dataclass
class BenchmarkResult:
    """Outputs of :func:`run_benchmark`.

    Attributes
    ----------
    summary : one row per model: each metric's mean over seeds of the per-seed mean over folds,
        ``score`` (VCC score vs cell_mean), ``<metric>_sd`` (sd over seeds of the per-seed
        fold means; 0 for baselines, which are fitted once; NaN for a learned model run with
        one seed), ``n_seeds`` and ``embeddings`` (the gene table the model used, or empty)
    per_perturbation : one row per (model, seed, fold, context, perturbation); ``spread``
        (ensembles, ``n_seeds`` > 1) is the members' spread of the predicted mean change
    timings : model -> seconds spent (fit + predict + evaluate), all folds and seeds
    fits : one row per fitted model: model, seed, fold, fit_s, predict_s (predict + evaluate),
        and the model's training choices (:data:`CHOICE_KEYS`: a learned model's base,
        shrink, steps...; blend's weights; empty where a model has none)
    report_data : mean changes, a cell subsample and training curves for the HTML report
        (first seed)
    """

    summary: pd.DataFrame
    per_perturbation: pd.DataFrame
    timings: dict[str, float]
    fits: pd.DataFrame = field(default_factory=pd.DataFrame)
    report_data: ReportData | None = None

    def best_baseline(self, model: str | None = None) -> str | None:
        """The baseline with the highest VCC score among those that had the same gene table
        as ``model`` (default: as the learned models), or that take none."""
        return matched_best_baseline(self.summary, BASELINES, model)

    def comparisons(self) -> pd.DataFrame:
        """Each learned model against its best baseline (see
        :func:`~perturbcast.verdict.compare_to_baselines`)."""
        return compare_to_baselines(self.summary, BASELINES)

    def verdict(self) -> str:
        """One plain-words line: which model won, by how much, and whether that exceeds the
        seed spread."""
        return verdict_line(self.summary, BASELINES, self.fits)

    def calibration(self) -> list[SpreadCalibration]:
        """Per ensemble (``n_seeds`` > 1): whether its members' spread ranks the
        per-perturbation mae (see :func:`~perturbcast.verdict.spread_calibration`)."""
        return spread_calibration(self.per_perturbation)


def _real_adata(exp: Experiment, mask: np.ndarray) -> ad.AnnData:
    idx = np.flatnonzero(mask)
    obs = pd.DataFrame({exp.perturbation_key: exp.perturbations[idx]},
                       index=exp.adata.obs_names[idx].astype(str))
    return ad.AnnData(X=exp.rows(idx), obs=obs, var=pd.DataFrame(index=exp.genes),
                      uns={"perturbcast": {"normalization": uns_record(exp.normalization)}})


def check_folds(exp: Experiment, split: Split, models: list[str],
                model_params: dict[str, dict], seed: int = 0,
                skip_unable: bool = False) -> list[str]:
    """Fail before any training when a fold does not match the data or a model could not
    predict a fold's test perturbations (e.g. an unseen one without a gene vector).

    With ``skip_unable`` a model that cannot predict some fold is left out instead, with a
    warning naming it and why (for "every model" defaults); returns the models kept."""
    keep = []
    for name in models:
        check_params(name, model_params.get(name, {}))  # wrong kind or out of range: an error
        try:
            for fold in split.folds:
                model = get_model(name, seed=seed, **model_params.get(name, {}))
                model.check_can_predict(exp, sorted({p for p, _ in fold.test}),
                                        fold.train_mask(exp))
        except InputError as exc:
            if not skip_unable or name == REFERENCE_MODEL:
                raise
            warnings.warn(f"{name} is left out of this benchmark: {exc}", stacklevel=2)
            continue
        keep.append(name)
    return keep


def _fold_references(exp: Experiment, fold: Fold, fdr: FdrMode):
    """Per test context: the evaluated real cells and the test conditions to predict."""
    test = fold.test_mask(exp)
    conds = exp.conditions()
    conds = conds[[(p, c) in set(fold.test) for p, c in
                   zip(conds.perturbation, conds.context, strict=True)]]
    refs = {}
    for ctx in fold.test_contexts():
        in_ctx = exp.contexts == ctx
        real = _real_adata(exp, (test & in_ctx) | (exp.is_control & in_ctx))
        refs[ctx] = (Reference(real, exp.perturbation_key, exp.control, fdr),
                     conds[conds.context == ctx])
    return refs


def embeddings_of(model: PerturbationModel) -> str | None:
    """The gene table a fitted model used (``table_used`` where the model defines it, else
    ``embeddings_used``, e.g. "train" where "default" had no row for the training genes, else
    its ``embeddings`` parameter); None if it takes none."""
    if not (getattr(type(model), "takes_embeddings", False) or "embeddings" in model.params):
        return None
    if hasattr(model, "table_used"):  # known only after the fit (blend: its members' table)
        return model.table_used
    value = getattr(model, "embeddings_used", None) or model.params.get("embeddings")
    return None if value is None else str(value)


def run_benchmark(
    exp: Experiment,
    split: Split,
    models: Sequence[str] | None = None,
    seed: int = 0,
    fdr: FdrMode = "per_perturbation",
    edistance: bool = True,
    model_params: dict[str, dict] | None = None,
    show_progress: bool = True,
    seeds: Sequence[int] | None = None,
    n_top_genes: int | None = None,
    skip_unable: bool = False,
) -> BenchmarkResult:
    """Fit and evaluate each model on each fold; see :class:`BenchmarkResult`.

    Every fold and model is checked first (:func:`check_folds`), before any training.

    Parameters
    ----------
    models : model names (default: every registered model); cell_mean is always added
    seed : the seed when ``seeds`` is not given
    model_params : model -> parameters for :func:`~perturbcast.models.get_model`
    seeds : seeds for the learned models (each is fitted once per seed); baselines are fitted
        once, with the first seed
    n_top_genes : per fold, keep the most variable genes of that fold's training cells
        (:func:`~perturbcast.data.select_genes`), so held-out perturbations cannot choose them
    skip_unable : leave out (with a warning) a model that cannot predict a fold's test
        perturbations instead of failing (see :func:`check_folds`)
    """
    model_params = model_params or {}
    seeds = list(dict.fromkeys(seeds)) if seeds else [seed]
    names = list(dict.fromkeys([REFERENCE_MODEL, *(MODELS if models is None else models)]))
    names = check_folds(exp, split, names, model_params, seeds[0], skip_unable)
    full = exp
    runs = [(n, s) for n in names for s in (seeds[:1] if n in BASELINES else seeds)]
    units, rows, fits = [], [], []
    timings = {m: 0.0 for m in names}
    embeddings: dict[str, str | None] = {}
    report_data = ReportData(seed=seeds[0])
    once = WarnOnce()  # each kind of warning once per model, not once per fold and seed
    with progress(disable=not show_progress) as bar, warnings.catch_warnings():
        # torch's notice to Lightning (LeafSpec), once per fit; says nothing about results
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        task = bar.add_task("benchmark", total=len(split.folds) * len(runs))
        for fold in split.folds:
            if n_top_genes is not None and n_top_genes < full.n_genes:
                exp = select_genes(full, n_top_genes, mask=fold.train_mask(full))
            train = fold.train_mask(exp)
            refs = _fold_references(exp, fold, fdr)
            for name, s in runs:
                bar.update(task, description=f"{fold.name}: {name} (seed {s})")
                t0 = time.perf_counter()
                with once.model(name):
                    model = get_model(name, seed=s, **model_params.get(name, {}))
                    model.fit(exp, train)
                    embeddings[name] = embeddings_of(model)
                    t_fit = time.perf_counter()
                    for ctx, (ref, conds) in refs.items():
                        pred = model.predict(exp, conds, include_controls=True)
                        res = evaluate(pred, ref, edistance=edistance)
                        if s == seeds[0]:
                            report_data.add(name, fold.name, ctx, model, pred, ref)
                        key = {"model": name, "seed": s, "fold": fold.name, "context": ctx}
                        units.append({**key, **res.summary})
                        table = res.per_perturbation.reset_index().assign(**key)
                        spread = pred.uns["perturbcast"].get("spread")  # n_seeds > 1
                        if spread:
                            table["spread"] = [spread.get(f"{p}|{ctx}")
                                               for p in table.perturbation]
                        rows.append(table)
                t_end = time.perf_counter()
                summ = getattr(model, "training_summary", {})
                fits.append({"model": name, "seed": s, "fold": fold.name,
                             "fit_s": t_fit - t0, "predict_s": t_end - t_fit,
                             **{k: summ[k] for k in CHOICE_KEYS if k in summ}})
                timings[name] += t_end - t0
                bar.advance(task)
    if once.repeats_line():
        warnings.warn(once.repeats_line(), stacklevel=2)
    summary = summarise(pd.DataFrame(units), embeddings)
    per_pert = pd.concat(rows, ignore_index=True)
    first = ["model", "seed", "fold", "context"]
    per_pert = per_pert[first + [c for c in per_pert.columns if c not in (*first, *UNSCORED)] +
                        [c for c in UNSCORED if c in per_pert.columns]]
    return BenchmarkResult(summary, per_pert, timings, pd.DataFrame(fits), report_data)


def summarise(units: pd.DataFrame, embeddings: dict[str, str | None]) -> pd.DataFrame:
    """One row per model from one row per (model, seed, fold, context) of metric values.

    The VCC score of each unit is computed against cell_mean's in the same fold and context;
    a model's value per seed is the mean over folds (of the mean over contexts); the summary
    gives the mean and sd over seeds.
    """
    base = units[units.model == REFERENCE_MODEL].drop_duplicates(["fold", "context"])
    base = base.set_index(["fold", "context"])
    units = units.assign(score=[
        vcc_score(r, base.loc[(r["fold"], r["context"])].to_dict())[0]
        for r in units.to_dict("records")
    ])
    cols = [m for m in METRICS if m in units] + ["score"]
    per_fold = units.groupby(["model", "seed", "fold"], sort=False)[cols].mean()
    per_seed = per_fold.groupby(level=["model", "seed"], sort=False).mean()
    by_model = per_seed.groupby(level="model", sort=False)
    mean, sd = by_model.mean(), by_model.std(ddof=1)
    sd.loc[sd.index.isin(BASELINES)] = 0.0
    summary = mean.join(sd.add_suffix("_sd"))
    summary["n_seeds"] = by_model.size()
    summary["embeddings"] = [embeddings.get(m) for m in summary.index]
    return summary.reset_index()[["model", *cols, *[f"{c}_sd" for c in cols], "n_seeds",
                                  "embeddings"]]
