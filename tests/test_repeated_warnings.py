"""A benchmark shows each kind of warning once per model, and counts the repeats."""

from __future__ import annotations

import warnings

import pytest

from perturbcast.benchmark import run_benchmark
from perturbcast.data import make_split
from perturbcast.repeated_warnings import WarnOnce, warning_kind


def test_warn_once_shows_the_first_of_each_kind_per_model():
    once = WarnOnce(ignore=((".*noise.*", FutureWarning),))
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        for fold in range(3):
            for model in ("a", "b"):
                with once.model(model):
                    warnings.warn(f"{model}: 'G{fold}' has no row (fold {fold}, {fold + 3} "
                                  f"of 9)", UserWarning, stacklevel=1)
                    warnings.warn("some noise", FutureWarning, stacklevel=1)
                    if fold == 2:
                        warnings.warn(f"{model}: a different warning", UserWarning,
                                      stacklevel=1)
    texts = [str(w.message) for w in shown]
    assert texts == ["a: 'G0' has no row (fold 0, 3 of 9)", "b: 'G0' has no row (fold 0, 3 of 9)",
                     "a: a different warning", "b: a different warning"]
    assert once.repeats == {"a": 2, "b": 2}
    assert "4 repeats" in once.repeats_line() and "a (2), b (2)" in once.repeats_line()
    assert WarnOnce().repeats_line() is None
    assert warning_kind("x: 'G1' 12 of 3.5 (e.g. 'y')") == "x: … … of … …"


def test_benchmark_warns_once_per_model_over_folds(sim_exp):
    """The simulated genes have no row in the built-in table: linear warns on every fold's
    fit, but the benchmark shows it once and says how many repeats it left out."""
    split = make_split(sim_exp, "combo", n_folds=3, seed=0)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        run_benchmark(sim_exp, split, ["linear"], show_progress=False, edistance=False)
    texts = [str(w.message) for w in shown]
    table = [t for t in texts if "built-in gene table" in t]
    assert len(table) == 1, texts
    repeats = [t for t in texts if "not shown again" in t]
    assert len(repeats) == 1 and "linear (2)" in repeats[0], texts


def test_pytest_warns_still_sees_a_benchmarks_warnings(sim_exp):
    split = make_split(sim_exp, "combo", n_folds=2, seed=0)
    with pytest.warns(UserWarning, match="built-in gene table"):
        run_benchmark(sim_exp, split, ["linear"], show_progress=False, edistance=False)
