"""``base_rule``: how base=auto picks among candidate bases from their out-of-fold changes."""

import numpy as np
import pytest

from perturbcast import InputError, get_model
from perturbcast.models.base_rule import (
    InnerBaseTable,
    _discrimination,
    condition_stats,
    rule_choice,
    vcc_like,
)


def test_condition_stats_on_known_cases():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(6, 40))
    ctx = np.array(["a"] * 3 + ["b"] * 3)
    exact = condition_stats(real, real, ctx)
    np.testing.assert_allclose(exact["sq_error"], 0)
    np.testing.assert_allclose(exact["pearson"], 1)
    np.testing.assert_allclose(exact["disc"], 1)  # nothing is closer than the condition itself
    np.testing.assert_allclose(exact["overlap"], 1)
    flat = condition_stats(np.zeros_like(real), real, ctx)
    np.testing.assert_allclose(flat["pearson"], 0)  # a constant prediction: no correlation
    np.testing.assert_allclose(flat["abs_error"], np.abs(real).mean(1))
    # discrimination ranks each prediction among the real rows of its own context only
    pred = real[[3, 4, 5, 0, 1, 2]] + 0.1 * rng.normal(size=real.shape)
    got = condition_stats(pred, real, ctx)["disc"]
    want, pooled = np.ones(6), np.ones(6)
    for i in range(6):
        d = np.abs(real - pred[i]).sum(1)
        same = np.flatnonzero(ctx == ctx[i])
        want[i] = 1 - (d[same] < d[i]).sum() / (same.size - 1)
        pooled[i] = 1 - (d < d[i]).sum() / 5
    np.testing.assert_allclose(got, want)
    assert not np.allclose(got, pooled)  # a version that ignored contexts would fail
    alone = condition_stats(pred[:4], real[:4], np.array(["a", "a", "a", "b"]))["disc"]
    assert alone[3] == 1  # alone in its context: nothing to tell it from
    many = rng.normal(size=(300, 20))
    noisy, groups = many + rng.normal(size=many.shape), np.repeat(["a", "b"], 150)
    only = condition_stats(noisy, many, groups, ("disc",))
    assert set(only) == {"disc"}  # only what is asked for is computed
    np.testing.assert_allclose(_discrimination(noisy, many, groups, block=7), only["disc"])
    assert condition_stats(np.zeros_like(real), real, ctx)["overlap"].max() == 0


def _table(stats: dict[str, dict[str, np.ndarray]]) -> InnerBaseTable:
    return InnerBaseTable.from_stats(stats)


def _stats(sq, pearson, abs_error, disc, overlap, n=20, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(5, n))
    z -= z.mean(1, keepdims=True)  # centred: each statistic's mean is exactly the value given
    return {k: np.full(n, v) + noise * zk for zk, (k, v) in zip(z, dict(
        sq_error=sq, pearson=pearson, abs_error=abs_error, disc=disc,
        overlap=overlap).items(), strict=True)}


def test_parity_score_takes_the_better_score_among_the_tied_on_error_and_correlation():
    """knn and blend tie within noise on error and correlation; knn discriminates better: the
    error rule takes blend (lower mean error by a hair), parity_score knn. linear scores best
    but its error is far worse: never taken."""
    table = _table({
        "none": _stats(5.0, 0.0, 0.2, 0.5, 0.1),
        "cell_mean": _stats(2.0, 0.3, 0.1, 0.5, 0.1, noise=0.2, seed=1),
        "blend": _stats(1.00, 0.5, 0.08, 0.55, 0.2, noise=0.3, seed=2),
        "knn": _stats(1.01, 0.5, 0.08, 0.70, 0.3, noise=0.3, seed=3),
        "linear": _stats(3.0, 0.45, 0.12, 0.90, 0.5, noise=0.01, seed=4),
    })
    errors = table.mean("sq_error")
    assert errors["blend"] < errors["knn"]
    assert rule_choice(table, "error") == "blend"
    assert rule_choice(table, "parity_score") == "knn"
    score = vcc_like(table)
    assert score["linear"] > score["knn"] > score["blend"] and score["cell_mean"] == 0


def test_parity_score_needs_correlation_parity_too():
    """A candidate tied on error but clearly worse on correlation is not admissible."""
    table = _table({
        "cell_mean": _stats(2.0, 0.3, 0.1, 0.5, 0.1, noise=0.05, seed=1),
        "blend": _stats(1.0, 0.6, 0.08, 0.55, 0.2, noise=0.05, seed=2),
        "knn": _stats(1.0, 0.3, 0.08, 0.90, 0.5, noise=0.05, seed=3),
    })
    assert rule_choice(table, "parity_score") == "blend"


def test_parity_score_falls_back_to_error_when_nothing_ties_on_both():
    """The best on error is clearly worse on correlation, the best on correlation clearly worse
    on error: no candidate is within one standard error on both, so the error rule decides."""
    table = _table({
        "cell_mean": _stats(3.0, 0.2, 0.1, 0.5, 0.1, noise=0.01, seed=1),
        "additive": _stats(1.0, 0.3, 0.08, 0.5, 0.1, noise=0.01, seed=2),
        "linear": _stats(2.0, 0.6, 0.09, 0.9, 0.5, noise=0.01, seed=3),
    })
    assert rule_choice(table, "error") == "additive"
    assert rule_choice(table, "parity_score") == "additive"
    assert vcc_like(table)["linear"] > vcc_like(table)["additive"]


def test_parity_score_falls_back_to_error_without_cell_mean():
    table = _table({"blend": _stats(1.0, 0.5, 0.08, 0.5, 0.2, noise=0.3, seed=2),
                    "knn": _stats(1.01, 0.5, 0.08, 0.9, 0.5, noise=0.3, seed=3)})
    assert np.isnan(list(vcc_like(table).values())).all()
    assert rule_choice(table, "parity_score") == rule_choice(table, "error")


def test_table_averages_assignments():
    rng = np.random.default_rng(0)
    real, ctx = rng.normal(size=(4, 12)), np.array(["a"] * 4)
    preds = [real + rng.normal(size=real.shape) for _ in range(3)]
    table = InnerBaseTable()
    for p in preds:
        table.add("m", p, real, ctx)
    want = np.mean([condition_stats(p, real, ctx)["sq_error"] for p in preds], 0)
    np.testing.assert_allclose(table.stats["m"]["sq_error"], want)


def test_bad_rule_is_refused_in_one_line():
    for name in ("flow", "transition", "incontext"):
        with pytest.raises(InputError, match="base_rule='best'.*error, parity_score"):
            get_model(name, base_rule="best")
    with pytest.raises(ValueError):
        rule_choice(_table({"a": _stats(1, 1, 1, 1, 1)}), "best")
