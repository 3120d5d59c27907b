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


def test_whole_number_floats_are_integers():
    """--param max_steps=1e3 arrives from JSON as 1000.0: an integer, not refused."""
    from perturbcast import InputError, get_model

    m = get_model("transition", max_steps=1e3, patience=2.0)
    assert m.params["max_steps"] == 1000 and type(m.params["max_steps"]) is int
    for bad in (2.5, float("inf"), float("nan")):
        with pytest.raises(InputError, match="is not an integer"):
            get_model("transition", max_steps=bad)

