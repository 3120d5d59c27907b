import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import false_discovery_control, mannwhitneyu

from perturbcast.eval import differential_expression, mann_whitney_u
from perturbcast.eval.de import benjamini_hochberg


@settings(max_examples=60, deadline=None)
@given(n1=st.integers(2, 25), n2=st.integers(2, 25), levels=st.integers(1, 6),
       seed=st.integers(0, 10_000))
def test_mwu_equals_scipy_asymptotic(n1, n2, levels, seed):
    rng = np.random.default_rng(seed)
    # few distinct values -> many ties, zeros included, like sparse expression
    g = rng.integers(0, levels, (n1, 5)).astype(np.float64) * 0.37
    r = rng.integers(0, levels, (n2, 5)).astype(np.float64) * 0.37
    u, p = mann_whitney_u(g, r)
    for j in range(5):
        if np.ptp(np.r_[g[:, j], r[:, j]]) == 0:
            assert p[j] == 1.0
            continue
        ref = mannwhitneyu(g[:, j], r[:, j], alternative="two-sided", method="asymptotic",
                           use_continuity=True)
        assert u[j] == pytest.approx(ref.statistic, abs=1e-9)
        assert p[j] == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15)


def test_bh_equals_scipy():
    rng = np.random.default_rng(0)
    p = rng.random((4, 50)) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), np.stack(
        [false_discovery_control(row) for row in p]), rtol=1e-12)
    np.testing.assert_allclose(benjamini_hochberg(p.ravel()), false_discovery_control(p.ravel()))


def test_fdr_modes_and_fold_change():
    rng = np.random.default_rng(1)
    ctrl = rng.poisson(1.0, (60, 30)).astype(np.float64)
    up = rng.poisson(1.0, (40, 30)).astype(np.float64)
    up[:, :5] += 3
    x = np.log1p(np.vstack([ctrl, up, rng.poisson(1.0, (40, 30))]))
    labels = np.array(["ctl"] * 60 + ["up"] * 40 + ["null"] * 40)
    genes = np.array([f"g{i}" for i in range(30)])
    per = differential_expression(x, labels, "ctl", genes)
    glob = differential_expression(x, labels, "ctl", genes, fdr="global")
    assert list(per.perturbations) == ["null", "up"]
    np.testing.assert_array_equal(per.p_value, glob.p_value)
    assert not np.allclose(per.fdr, glob.fdr)
    assert (per.fdr[1, :5] < 0.05).all() and (per.log2_fold_change[1, :5] > 1).all()
    gm = np.expm1(x[60:100].mean(0)) / np.expm1(x[:60].mean(0))
    np.testing.assert_allclose(per.log2_fold_change[1], np.log2(gm))
    frame = per.to_frame()
    assert list(frame.columns[:2]) == ["target", "feature"] and len(frame) == 60
    # epsilon damps fold changes of genes absent from controls
    x2 = x.copy()
    x2[:60, 7] = 0.0
    e0 = differential_expression(x2, labels, "ctl", genes)
    e1 = differential_expression(x2, labels, "ctl", genes, epsilon=1.0)
    assert np.isinf(e0.log2_fold_change[1, 7]) and np.isfinite(e1.log2_fold_change[1, 7])
