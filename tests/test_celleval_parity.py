"""Our metrics equal cell-eval 0.8.x's on the same files (cell-eval is run here)."""

import logging

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from perturbcast import get_model, make_split
from perturbcast.data import read_experiment
from perturbcast.datasets import simulate
from perturbcast.eval import METRICS, evaluate

cell_eval = pytest.importorskip("cell_eval")
EXACT = {m for m in METRICS if m.startswith(("overlap", "precision", "discrimination", "de_"))}


def _run_cell_eval(pred, real, key, control, tmp_path):
    logging.disable(logging.WARNING)
    ev = cell_eval.MetricsEvaluator(adata_pred=pred.copy(), adata_real=real.copy(),
                                    control_pert=control, pert_col=key,
                                    outdir=str(tmp_path / "ce"), num_threads=1)
    res, agg = ev.compute(profile="full", write_csv=False)
    logging.disable(logging.NOTSET)
    mean_row = agg.filter(agg["statistic"] == "mean").to_dicts()[0]
    return res.to_pandas().set_index("perturbation"), mean_row


def _compare(ours, cell_eval_out):
    theirs, their_mean = cell_eval_out
    for m in METRICS:
        a = ours.per_perturbation[m].astype(float)
        b = theirs[m].reindex(a.index).astype(float)
        np.testing.assert_array_equal(np.isnan(a.values), np.isnan(b.values), err_msg=m)
        ok = ~np.isnan(a.values)
        if m in EXACT - {"de_spearman_lfc_sig", "de_spearman_sig"}:
            np.testing.assert_array_equal(a.values[ok], b.values[ok], err_msg=m)
        else:
            np.testing.assert_allclose(a.values[ok], b.values[ok], atol=1e-6, rtol=0,
                                       err_msg=m)
        # cell-eval's aggregate (polars describe): nulls skipped, NaN propagates
        summary = their_mean[m]
        summary = float("nan") if summary is None else float(summary)
        assert ours.summary[m] == pytest.approx(summary, abs=1e-6, nan_ok=True), m


def _case(model_name):
    a = simulate(n_genes=150, n_singles=10, n_combos=4, n_contexts=1, cells_per_condition=40,
                 control_cells=120, seed=11)
    exp = read_experiment(a, "perturbation", "control")
    fold = make_split(exp, "unseen-perturbation", n_folds=2, seed=0).folds[0]
    m = get_model(model_name).fit(exp, fold.train_mask(exp))
    conds = exp.conditions()
    conds = conds[conds.perturbation.isin([p for p, _ in fold.test])]
    pred = m.predict(exp, conds, include_controls=True)
    pred = ad.AnnData(X=pred.X, obs=pred.obs[["perturbation"]], var=pred.var)
    keep = fold.test_mask(exp) | exp.is_control
    return pred, a[keep].copy()


@pytest.mark.parametrize("model_name", ["additive", "cell_mean"])
def test_parity_on_simulated_counts(model_name, tmp_path):
    """Real side as raw integer counts (both tools normalise to the median library size)."""
    pred, real = _case(model_name)
    real = ad.AnnData(X=sp.csr_matrix(real.X), obs=real.obs[["perturbation"]], var=real.var)
    ours = evaluate(pred, real, "perturbation", "control")
    _compare(ours, _run_cell_eval(pred, real, "perturbation", "control", tmp_path))


def test_parity_on_real_papalexi(shared_data, tmp_path):
    from perturbcast.benchmark import _real_adata
    from perturbcast.datasets.tasks import load_task

    exp, split = load_task("papalexi21_unseen", shared_data /
                           "papalexi2021_thp1_lowmoi_sceptredata.h5ad")
    fold = split.folds[1]
    m = get_model("linear").fit(exp, fold.train_mask(exp))
    conds = exp.conditions()
    conds = conds[conds.perturbation.isin([p for p, _ in fold.test])]
    pred = m.predict(exp, conds, include_controls=True)
    pred = ad.AnnData(X=pred.X, obs=pred.obs[["perturbation"]], var=pred.var)
    real = _real_adata(exp, fold.test_mask(exp) | exp.is_control)
    ours = evaluate(pred, real, "perturbation", "control")
    _compare(ours, _run_cell_eval(pred, real, "perturbation", "control", tmp_path))
