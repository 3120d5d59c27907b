"""``--exclude``: labels such as 'unassigned' dropped on reading from the command line, saved
with the model so predicting drops them too (before, only the Python API could drop them)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from _bad_input_common import KEYS, _cli, tiny


@pytest.fixture()
def with_unassigned(tmp_path):
    """tiny() with one (perturbation, context) group's 8 cells relabelled 'unassigned'."""
    a = tiny()
    labels = a.obs["perturbation"].astype(str).to_numpy()
    contexts = a.obs["context"].astype(str).to_numpy()
    first = sorted(set(labels) - {"control"})[0]
    hit = (labels == first) & (contexts == "ctx0")
    labels[hit] = "unassigned"
    a.obs["perturbation"] = labels
    path = tmp_path / "screen.h5ad"
    a.write_h5ad(path)
    return path, int(hit.sum())


def _train(path, out, *extra):
    return ["train", "--data", str(path), *KEYS, "--context-key", "context", "--model",
            "perturbation_mean", "--out", str(out), *extra]


def test_exclude_drops_the_cells_and_the_model_keeps_the_labels(with_unassigned, tmp_path,
                                                                 capsys):
    path, n = with_unassigned
    with pytest.warns(UserWarning, match="labelled unassigned.*--exclude unassigned"):
        assert _cli(_train(path, tmp_path / "plain"), capsys)[0] == 0
    assert "unassigned" in json.loads((tmp_path / "plain" / "config.json").read_text())[
        "vocabulary"]

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 'unassigned' announcement once it is excluded
        code, err = _cli(_train(path, tmp_path / "m", "--exclude", "unassigned"), capsys)
    assert code == 0, err
    assert f"excluded {n} cells labelled unassigned" in err
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "unassigned" not in config["vocabulary"] and config["keys"]["exclude"] == [
        "unassigned"]

    # predicting from the same file drops them by the model's record, without a word
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, err = _cli(["predict", "--model", str(tmp_path / "m"), "--data", str(path),
                          "--out", str(tmp_path / "pred.h5ad"), "--n-cells", "5"], capsys)
    assert code == 0, err


def test_exclude_refuses_the_control_and_flags_a_typo(with_unassigned, tmp_path, capsys):
    path, _ = with_unassigned
    code, err = _cli(_train(path, tmp_path / "m", "--exclude", "unassigned,control"), capsys)
    assert code == 2 and "names the control label 'control'" in err, err
    assert not (tmp_path / "m").exists()

    with pytest.warns(UserWarning) as caught:
        code, err = _cli(_train(path, tmp_path / "m2", "--exclude", "unasigned"), capsys)
    assert code == 0, err
    texts = [str(w.message) for w in caught]
    assert any("--exclude unasigned: no cell" in t and "Did you mean: 'unassigned'" in t
               for t in texts), texts


def test_exclude_in_split_and_with_a_task(with_unassigned, tmp_path, capsys):
    path, _ = with_unassigned
    code, err = _cli(["split", "--data", str(path), *KEYS, "--out", str(tmp_path / "s.json"),
                      "--exclude", "unassigned"], capsys)
    assert code == 0, err
    folds = json.loads((tmp_path / "s.json").read_text())["folds"]
    held = {p for f in folds for p, _ in f["test"]}
    assert held and "unassigned" not in held
    code, err = _cli(["benchmark", "--task", "papalexi21_unseen", "--exclude", "x", "--out",
                      str(tmp_path / "b")], capsys)
    assert code == 2 and "drop --exclude" in err, err


def test_read_experiment_counts_what_it_excluded(with_unassigned):
    from perturbcast import read_experiment

    path, n = with_unassigned
    exp = read_experiment(path, "perturbation", "control", exclude=["unassigned", "absent"])
    assert exp.meta["excluded"] == {"unassigned": n, "absent": 0}
    assert not np.isin(exp.perturbations, ["unassigned"]).any()


def test_exclude_labels_are_read_like_the_file_labels(with_unassigned):
    """None, one string, and labels with stray whitespace or a control component are compared
    in canonical form, as the file's labels are (' unassigned' dropped nothing before)."""
    from perturbcast import InputError, read_experiment

    path, n = with_unassigned
    for exclude, counted in ((None, {}), ((), {}), ("unassigned", {"unassigned": n}),
                             ([" unassigned "], {"unassigned": n}),
                             (["unassigned+control"], {"unassigned": n})):
        exp = read_experiment(path, "perturbation", "control", exclude=exclude)
        assert exp.meta.get("excluded", {}) == counted, exclude
        assert ("unassigned" in exp.perturbation_names()) == (not counted)
    with pytest.raises(InputError, match="names the control label 'control'"):
        read_experiment(path, "perturbation", "control", exclude=[" control"])
