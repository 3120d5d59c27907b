"""Shared helpers: atomic writes leave nothing on failure and give files the usual modes."""

import os
import stat

import pytest

from perturbcast.utils import atomic_path


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_atomic_file_and_dir_get_umask_modes(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with atomic_path(tmp_path / "d", is_dir=True) as tmp:
            (tmp / "a").write_text("y")
    finally:
        os.umask(umask)
    assert _mode(tmp_path / "f.txt") == 0o644
    assert _mode(tmp_path / "d") == 0o755


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "f.txt") as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_json_is_standard_nan_becomes_null(tmp_path):
    """summary.json once held ``NaN`` (pearson_edistance of a one-cell group): not JSON."""
    import json

    import numpy as np

    from perturbcast.utils import json_text, write_json

    obj = {"a": float("nan"), "b": np.float32(np.inf), "c": [1.5, np.nan, np.int64(3)],
           "d": np.array([0.5, np.nan]), "e": {"f": -np.inf, "g": "text", "h": None}}
    write_json(tmp_path / "s.json", obj)

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    got = json.loads((tmp_path / "s.json").read_text(), parse_constant=refuse)
    assert got == {"a": None, "b": None, "c": [1.5, None, 3], "d": [0.5, None],
                   "e": {"f": None, "g": "text", "h": None}}
    assert json.loads(json_text({"x": np.float64(0.25)})) == {"x": 0.25}


def test_numbers_out_of_range_are_refused_when_the_model_is_made():
    """Every numeric parameter is finite and in its range, by get_model and by the class
    itself, so no saved config holds a number JSON cannot write (inf was saved as null)."""
    from perturbcast import InputError, get_model
    from perturbcast.models import MODELS
    from perturbcast.models.param_types import RANGES

    for bad in ({"lr": -1e-3}, {"lr": float("inf")}, {"depth": 10**400}, {"lr": float("nan")},
                {"max_epochs": -1},
                {"context_dropout": 1.0}, {"memory_budget_gb": float("inf")}, {"depth": 0},
                {"shrink": 1.5}, {"inner_folds": 1}):
        for make in (lambda kw: get_model("transition", **kw),
                     lambda kw: MODELS["transition"](**kw)):
            with pytest.raises(InputError, match=f"{next(iter(bad))}=.* out of range|"
                                                 "must be at least 2"):
                make(bad)
    with pytest.raises(InputError, match="ridge=-0.5 is out of range"):
        MODELS["linear"](ridge=-0.5)
    # every model's defaults are inside the ranges, and the edges that are allowed are taken
    for cls in MODELS.values():
        cls()
    get_model("transition", max_steps=0, val_fraction=0.0, max_epochs="none", shrink=0, lr=0)
    for devices in (1, -1, "auto", "0,1", [0, 1]):  # what Lightning takes
        get_model("flow", devices=devices)
    for devices in ("two", 0, -2, [], True):
        with pytest.raises(InputError, match="devices=.* is not auto, a whole number"):
            get_model("flow", devices=devices)
    assert set(RANGES) <= {k for c in MODELS.values() for k in c.param_defaults()}


def test_a_saved_model_loads_whatever_the_ranges_are_now(tmp_path):
    """Ranges govern fitting: a config saved before a range existed still loads (only making
    a model to fit refuses the value)."""
    import json

    from perturbcast import InputError, PerturbationModel, get_model
    from perturbcast.data import read_experiment
    from perturbcast.datasets import simulate

    exp = read_experiment(simulate(n_genes=20, n_singles=3, n_combos=0, n_contexts=1,
                                   cells_per_condition=6, control_cells=12, seed=0),
                          "perturbation", "control")
    get_model("linear").fit(exp).save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["params"]["ridge"] = -1.0  # out of today's range
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    model = PerturbationModel.load(tmp_path / "m")
    assert model.params["ridge"] == -1.0
    with pytest.raises(InputError, match="ridge=-1.0 is out of range"):
        type(model)(**model.params)


def test_whole_number_floats_are_integers():
    """--param max_steps=1e3 arrives from JSON as 1000.0: an integer, not refused."""
    from perturbcast import InputError, get_model

    m = get_model("transition", max_steps=1e3, patience=2.0)
    assert m.params["max_steps"] == 1000 and type(m.params["max_steps"]) is int
    for bad in (2.5, float("inf"), float("nan")):
        with pytest.raises(InputError, match="is not an integer"):
            get_model("transition", max_steps=bad)

