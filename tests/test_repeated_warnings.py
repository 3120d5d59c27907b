"""A benchmark shows each kind of warning once per model, and counts the repeats."""

from __future__ import annotations

import warnings

import pytest

from perturbcast.benchmark import run_benchmark
from perturbcast.data import make_split
from perturbcast.repeated_warnings import WarnOnce, warning_kind


def test_warn_once_shows_the_first_of_each_kind_per_model():
    once = WarnOnce()
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        for fold in range(3):
            for model in ("a", "b"):
                with once.model(model):
                    warnings.warn(f"{model}: {fold + 3} of 9 have no row (e.g. 'G{fold}')",
                                  UserWarning, stacklevel=1)
                    if fold == 2:
                        warnings.warn(f"{model}: a different warning", UserWarning,
                                      stacklevel=1)
    texts = [str(w.message) for w in shown]
    assert texts == ["a: 3 of 9 have no row (e.g. 'G0')", "b: 3 of 9 have no row (e.g. 'G0')",
                     "a: a different warning", "b: a different warning"]
    assert once.repeats == {"a": 2, "b": 2}
    assert "4 repeats" in once.repeats_line() and "a (2), b (2)" in once.repeats_line()
    assert WarnOnce().repeats_line() is None


def test_a_kind_keeps_quoted_names_and_drops_numbers_and_examples():
    assert warning_kind("x: 12 of 3.5 (e.g. 'y', 'z')") == warning_kind("x: 1 of 2 (e.g. 'q')")
    assert warning_kind("context 'K562' had none") != warning_kind("context 'HepG2' had none")
    assert warning_kind("batch(es) ['rep1'] unseen") != warning_kind("batch(es) ['rep9'] unseen")
    assert warning_kind("the model's 3 genes") == warning_kind("the model's 4 genes")


def test_the_callers_filters_still_apply():
    """An ignored warning is neither shown nor counted; an error filter raises at once, where
    the warning is issued (the rest of the body does not run)."""
    once = WarnOnce()
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        for _ in range(3):
            with once.model("m"):
                warnings.warn("old", DeprecationWarning, stacklevel=1)
    assert not shown and once.repeats_line() is None
    ran_on = []
    with warnings.catch_warnings(), pytest.raises(UserWarning, match="stop"):
        warnings.simplefilter("error")
        with once.model("m"):
            warnings.warn("stop", UserWarning, stacklevel=1)
            ran_on.append(True)
    assert not ran_on


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


def test_command_line_warnings_are_one_line():
    """The CLI shows 'warning: <message>', not the source path and line of code."""
    from perturbcast.repeated_warnings import one_line_warning

    assert one_line_warning("no gene table row for G1", UserWarning, "/x/y.py", 12,
                            "names, vecs = resolve(") == "warning: no gene table row for G1\n"
    assert one_line_warning("old", DeprecationWarning, "f.py", 1) == (
        "warning (DeprecationWarning): old\n")
    once = WarnOnce()
    with warnings.catch_warnings(), once.model("transition"):
        warnings.simplefilter("always")
        for n in range(3):
            warnings.warn(f"{n} genes have no row", UserWarning, stacklevel=1)
    assert once.repeats_line("the inner folds and probes").startswith(
        "2 repeats of warnings shown above (the same warning on the inner folds and probes)")
