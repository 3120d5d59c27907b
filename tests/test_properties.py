"""Property-based tests (hypothesis) of the metrics and the data layer: no crash, invariants."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perturbcast.data import read_experiment
from perturbcast.errors import InputError
from perturbcast.eval import evaluate

SETTINGS = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MEAN_METRICS = ("pearson_delta", "mae", "mse", "mae_delta", "mse_delta",
                "discrimination_score_l1", "discrimination_score_l2",
                "discrimination_score_cosine")


@st.composite
def screens(draw, max_perts: int = 4, max_genes: int = 10):
    """(log1p expression, labels): control plus 2-4 perturbations of 3-6 cells each."""
    n_perts = draw(st.integers(2, max_perts))
    n_genes = draw(st.integers(3, max_genes))
    sizes = [draw(st.integers(3, 6)) for _ in range(n_perts + 1)]
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    shift = rng.normal(0, 1, (n_perts + 1, n_genes)) * (rng.random(n_genes) < 0.5)
    shift[0] = 0
    labels = np.repeat(["control", *[f"P{i}" for i in range(n_perts)]], sizes)
    base = rng.gamma(2.0, 1.0, n_genes)
    x = np.clip(base + shift[np.repeat(np.arange(n_perts + 1), sizes)]
                + rng.normal(0, 0.3, (len(labels), n_genes)), 0, None)
    if draw(st.booleans()):  # sparse-looking: many exact zeros
        x[rng.random(x.shape) < 0.3] = 0
    return np.log1p(x).astype(np.float32), labels


def _adata(x: np.ndarray, labels: np.ndarray, genes=None) -> ad.AnnData:
    genes = [f"g{i}" for i in range(x.shape[1])] if genes is None else genes
    return ad.AnnData(X=x, obs=pd.DataFrame({"p": labels}, index=[f"c{i}" for i in
                                                                    range(len(labels))]),
                      var=pd.DataFrame(index=genes))


def _summary(pred: ad.AnnData, real: ad.AnnData) -> dict[str, float]:
    return evaluate(pred, real, "p", "control", edistance=False).summary


def _same(a: dict, b: dict, keys) -> None:
    for k in keys:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-9, equal_nan=True, err_msg=k)


@SETTINGS
@given(screens())
def test_perfect_prediction_scores_perfectly(screen):
    x, labels = screen
    real = _adata(x, labels)
    res = evaluate(real.copy(), real, "p", "control", edistance=False)
    s, per = res.summary, res.per_perturbation
    assert s["mae"] == 0 and s["mse"] == 0 and s["mae_delta"] == 0
    deltas = pd.DataFrame(x).groupby(labels).mean()
    deltas = (deltas.drop("control") - deltas.loc["control"]).to_numpy()
    if np.all(deltas.std(1) > 1e-6):
        assert s["pearson_delta"] == pytest.approx(1.0)
    if len({tuple(np.round(d, 6)) for d in deltas}) == len(deltas):
        assert s["discrimination_score_l1"] == 1.0
    # every real DE gene is found (cell-eval scores 0 where the real data has none)
    np.testing.assert_array_equal(per.overlap_at_N, (per.de_nsig_counts_real > 0).astype(float))


@SETTINGS
@given(screens(), screens(), st.integers(0, 2**16))
def test_permuting_cells_or_genes_changes_nothing(screen, other, seed):
    x, labels = screen
    rng = np.random.default_rng(seed)
    # a prediction with the same labels and genes: another screen's cells, resized
    px = np.resize(other[0], x.shape).astype(np.float32)
    real, pred = _adata(x, labels), _adata(px, labels)
    want = _summary(pred, real)
    cells_r, cells_p = rng.permutation(len(labels)), rng.permutation(len(labels))
    got = _summary(pred[cells_p].copy(), real[cells_r].copy())
    _same(want, got, [k for k in want if k != "de_spearman_sig"])
    genes = rng.permutation(x.shape[1])
    names = np.array(real.var_names)[genes]
    got = _summary(_adata(px[:, genes], labels, names), _adata(x[:, genes], labels, names))
    _same(want, got, MEAN_METRICS)


@SETTINGS
@given(screens())
def test_zero_delta_prediction_scores_like_the_control(screen):
    """Scaling a prediction's change by 0 predicts the control mean for every perturbation."""
    x, labels = screen
    real = _adata(x, labels)
    ctrl = x[labels == "control"]
    px = np.concatenate([ctrl] * (len(set(labels))))
    plabels = np.repeat(sorted(set(labels), key=lambda v: (v != "control", v)), len(ctrl))
    s = _summary(_adata(px, plabels), real)
    means = pd.DataFrame(x).groupby(labels).mean()
    diff = means.drop("control").to_numpy() - means.loc["control"].to_numpy()
    assert s["mae"] == pytest.approx(np.abs(diff).mean(1).mean(), rel=1e-5)
    assert s["mse"] == pytest.approx((diff**2).mean(1).mean(), rel=1e-5)
    assert np.isnan(s["pearson_delta"])  # a zero change has no correlation (as cell-eval)


@SETTINGS
@given(st.lists(st.sampled_from(["A", "B", "A+B", " A", "B ", "A|B", "ctrl", "Ω", "", "nan",
                                 "control", "A+control", "+", "A++B"]),
                min_size=12, max_size=40), st.integers(0, 2**16))
def test_any_labels_read_or_refused_cleanly(labels, seed):
    """Odd labels either read or fail with an InputError; never another exception."""
    labels = np.array([*labels, *["control"] * 3])
    rng = np.random.default_rng(seed)
    a = _adata(rng.poisson(3, (len(labels), 6)).astype(np.float32), labels)
    try:
        exp = read_experiment(a, "p", "control", min_cells=1)
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert exp.n_cells == len(labels) and "control" not in exp.perturbation_names()


@SETTINGS
@given(st.integers(1, 40), st.integers(1, 12), st.integers(0, 2**16), st.booleans())
def test_reading_normalises_and_is_order_free(n_cells, n_genes, seed, counts):
    rng = np.random.default_rng(seed)
    x = rng.poisson(4, (n_cells + 3, n_genes)).astype(np.float32)
    x[:, 0] += 1  # no empty cells
    if not counts:
        x = np.log1p(x / x.sum(1, keepdims=True) * 1e4) + 1e-3
    labels = np.array(["control"] * 3 + list(rng.choice(["A", "B"], n_cells)))
    exp = read_experiment(_adata(x, labels), "p", "control", min_cells=1)
    assert exp.input_scale == ("counts" if counts else "log1p")
    rows = exp.rows(np.arange(exp.n_cells))
    assert np.isfinite(rows).all() and (rows >= 0).all()
    if counts:
        np.testing.assert_allclose(np.expm1(rows).sum(1), 1e4, rtol=1e-3)
    keys, means = exp.group_means(("perturbation",))
    cells, genes = rng.permutation(len(labels)), rng.permutation(n_genes)
    names = np.array([f"g{i}" for i in range(n_genes)])[genes]
    exp2 = read_experiment(_adata(x[cells][:, genes], labels[cells], names), "p", "control",
                           min_cells=1)
    keys2, means2 = exp2.group_means(("perturbation",))
    assert keys.perturbation.tolist() == keys2.perturbation.tolist()
    np.testing.assert_allclose(means2, means[:, genes], rtol=1e-5, atol=1e-6)
