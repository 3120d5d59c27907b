"""A catalogue of malformed inputs: each fails with one line that names the problem and the fix
(CLI exit code 2, no traceback) and writes nothing; merely unusual inputs that must work are in
test_unusual_input.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from _bad_input_common import KEYS, _cli, tiny


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A good file, a model trained on it, real and predicted files for evaluate."""
    d = tmp_path_factory.mktemp("good")
    a = tiny()
    a.write_h5ad(d / "good.h5ad")
    assert _cli(["train", "--data", str(d / "good.h5ad"), *KEYS, "--context-key", "context",
                 "--model", "perturbation_mean", "--out", str(d / "model")])[0] == 0
    real = a[a.obs.context == "ctx0"].copy()
    real.write_h5ad(d / "real.h5ad")
    perts = sorted(set(real.obs.perturbation) - {"control"})
    assert _cli(["predict", "--model", str(d / "model"), "--data", str(d / "good.h5ad"),
                 "--perturbations", ",".join(perts), "--contexts", "ctx0", "--n-cells", "8",
                 "--include-controls", "--out", str(d / "pred.h5ad")])[0] == 0
    return d


def _write(path: Path, mutate: Callable[[ad.AnnData], ad.AnnData | None]) -> Path:
    a = tiny()
    a = mutate(a) or a
    a.write_h5ad(path)
    return path


def _set_x(a, fn):
    x = a.X.toarray().astype(np.float64)
    fn(x)
    a.X = x


def _relabel(a, old: str, new: str):
    a.obs["perturbation"] = a.obs.perturbation.astype(str).replace(old, new)


def _drop_context_controls(a):
    keep = ~((a.obs.perturbation == "control") & (a.obs.context == "ctx1")).to_numpy()
    return a[keep].copy()


def _one_cell_group(a):
    p = a.obs.perturbation.astype(str).to_numpy()
    first = np.flatnonzero(p == sorted(set(p) - {"control"})[0])
    return a[np.setdiff1d(np.arange(a.n_obs), first[1:])].copy()


def _nan_label(a):
    a.obs["perturbation"] = a.obs.perturbation.astype(object)
    a.obs.iloc[0, a.obs.columns.get_loc("perturbation")] = np.nan


# id, mutation of the good file, extra train args, fragment of the one-line error
TRAIN_CASES = [
    ("misspelled-perturbation-key", None, ["--perturbation-key", "perturbaton"],
     "obs column 'perturbaton' not found"),
    ("missing-context-key", None, ["--context-key", "cell_line"], "'cell_line' not found"),
    ("missing-batch-key", None, ["--batch-key", "batchh"], "Did you mean: 'batch'"),
    ("control-absent", None, ["--control", "non-targeting"], "control value 'non-targeting'"),
    ("control-absent-named-first", None, ["--control", "non-targeting"],
     "Control-like values: control. Values: control, "),  # not lost in a '(+N more)' tail
    ("control-wrong-case", None, ["--control", "Control"], "Did you mean: 'control'"),
    ("control-renamed", lambda a: _relabel(a, "control", "ctrl"), [], "Did you mean: 'ctrl'"),
    ("nan-in-x", lambda a: _set_x(a, lambda x: x.__setitem__((3, 4), np.nan)), [],
     "NaN or Inf"),
    ("inf-in-x", lambda a: _set_x(a, lambda x: x.__setitem__((5, 1), np.inf)), [],
     "NaN or Inf"),
    ("negative-in-x", lambda a: _set_x(a, lambda x: x.__setitem__((2, 2), -1.0)), [],
     "negative values"),
    ("scaled-data", lambda a: _set_x(a, lambda x: x.__isub__(x.mean(0))), [],
     "not scaled/centred"),
    ("nan-label", _nan_label, [], "missing (NaN) values"),
    ("duplicate-genes", lambda a: setattr(a, "var_names", ["g"] * 2 + list(a.var_names[2:])),
     [], "duplicate gene names"),
    ("duplicate-cells", lambda a: setattr(a, "obs_names", ["c"] * 2 + list(a.obs_names[2:])),
     [], "duplicate cell names"),
    ("single-cell-group", _one_cell_group, [], "fewer than 3 cells"),
    ("no-genes", lambda a: a[:, :0].copy(), [], "no genes"),
    ("only-controls", lambda a: a[(a.obs.perturbation == "control").to_numpy()].copy(), [],
     "no perturbed cells"),
    ("layer-missing", None, ["--layer", "counts"], "layer 'counts' not found"),
    ("unknown-model", None, ["--model", "lineer"], "unknown model 'lineer'; did you mean "
     "'linear'?"),
    # a value of the wrong kind: one line before any fitting (was a ValueError traceback)
    ("param-not-an-integer", None, ["--model", "transition", "--param", "max_steps=abc"],
     "transition: max_steps='abc' is not an integer"),
    ("param-not-a-number", None, ["--model", "linear", "--param", "ridge=abc"],
     "linear: ridge='abc' is not a number"),
    ("param-not-a-bool", None, ["--model", "flow", "--param", "ot=yes"],
     "flow: ot='yes' is not true or false"),
    ("param-knn-k", None, ["--model", "knn", "--param", "k=abc"], "must be integers"),
    ("param-knn-k-grid", None, ["--model", "knn", "--param", "k_grid=5"], "must be integers"),
    ("bad-param", None, ["--param", "noequals"], "is not KEY=VALUE"),
    # a number out of its range or not finite: one line before any fitting (was accepted, and
    # inf was saved as null in config.json)
    ("param-negative-lr", None, ["--model", "transition", "--param", "lr=-0.1"],
     "transition: lr=-0.1 is out of range (a finite number at least 0); e.g. --param lr=0.001"),
    ("param-infinite", None, ["--model", "flow", "--param", "memory_budget_gb=Infinity"],
     "memory_budget_gb=inf is out of range"),
    ("param-fraction", None, ["--model", "transition", "--param", "val_fraction=1"],
     "val_fraction=1 is out of range (a finite number in [0, 1))"),
    ("param-max-epochs-text", None, ["--model", "transition", "--param", "max_epochs=abc"],
     "max_epochs='abc' is not a number or none"),
    ("param-devices-text", None, ["--model", "transition", "--param", "devices=two"],
     "devices='two' is not auto, a whole number of processes per node"),
]


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_bad_training_input(case, tmp_path, capsys):
    _, mutate, extra, fragment = case
    data = _write(tmp_path / "bad.h5ad", mutate) if mutate else _write(tmp_path / "bad.h5ad",
                                                                     lambda a: None)
    args = ["train", "--data", str(data), *KEYS, "--model", "cell_mean"]
    # later options override earlier ones in typer: the case's options win
    code, err = _cli([*args, *extra, "--out", str(tmp_path / "model")], capsys)
    assert code == 2, err
    line = " ".join(err.split())
    assert fragment in line and "Traceback" not in err, err
    assert len(err.strip().splitlines()) <= 3  # one message (rich may wrap a long line)
    assert not (tmp_path / "model").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.h5ad"]


def test_no_controls_in_a_context(tmp_path, capsys):
    data = _write(tmp_path / "bad.h5ad", _drop_context_controls)
    code, err = _cli(["split", "--data", str(data), *KEYS, "--context-key", "context",
                      "--out", str(tmp_path / "s.json")], capsys)
    assert code == 2 and "no control cells" in err and "ctx1" in err, err
    assert not (tmp_path / "s.json").exists()


def _bytes(content: bytes):
    def make(path: Path) -> Path:
        path.write_bytes(content)
        return path
    return make


def _truncated(path: Path) -> Path:
    tiny().write_h5ad(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


FILE_CASES = [
    ("missing-file", lambda p: p, "file not found"),
    ("empty-file", _bytes(b""), "could not read"),
    ("csv-not-h5ad", _bytes(b"cell,gene\nc1,1\n"), "could not read"),
    ("random-bytes", _bytes(bytes(range(256)) * 64), "could not read"),
    ("truncated-h5ad", _truncated, "could not read"),
    ("directory-not-file", _folder, "is a folder, not an .h5ad file"),
]


@pytest.mark.parametrize("case", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_files(case, tmp_path, capsys):
    _, make, fragment = case
    data = make(tmp_path / "in.h5ad")
    code, err = _cli(["split", "--data", str(data), *KEYS, "--out", str(tmp_path / "s.json")],
                     capsys)
    assert code == 2 and fragment in " ".join(err.split()) and "Traceback" not in err, err
    assert not (tmp_path / "s.json").exists()


def _predict(files, tmp, data, extra=()):
    return ["predict", "--model", str(files / "model"), "--data", str(data), "--contexts",
            "ctx0", "--n-cells", "5", *extra, "--out", str(tmp / "pred.h5ad")]


def _genes_dropped(a):
    return a[:, 3:].copy()


PREDICT_CASES = [
    ("model-genes-missing", _genes_dropped, [], "3 of the model's 30 genes are missing"),
    ("unknown-context", None, ["--contexts", "ctx9"], "ctx9"),
    ("zero-cells", None, ["--n-cells", "0"], "--n-cells 0: pass at least 1"),
]


@pytest.mark.parametrize("case", PREDICT_CASES, ids=[c[0] for c in PREDICT_CASES])
def test_bad_predict_input(case, files, tmp_path, capsys):
    _, mutate, extra, fragment = case
    data = _write(tmp_path / "new.h5ad", mutate) if mutate else files / "good.h5ad"
    code, err = _cli(_predict(files, tmp_path, data, extra), capsys)
    assert code == 2 and fragment in " ".join(err.split()) and "Traceback" not in err, err
    assert not (tmp_path / "pred.h5ad").exists()


def test_not_a_model_folder(files, tmp_path, capsys):
    (tmp_path / "m").mkdir()
    code, err = _cli(["predict", "--model", str(tmp_path / "m"), "--data",
                      str(files / "good.h5ad"), "--out", str(tmp_path / "p.h5ad")], capsys)
    assert code == 2 and "not a saved perturbcast model" in err
    code, err = _cli(["predict", "--model", str(tmp_path / "nomodel"), "--data",
                      str(files / "good.h5ad"), "--out", str(tmp_path / "p.h5ad")], capsys)
    assert code == 2 and "nomodel does not exist; pass the --out folder" in " ".join(err.split())
    assert not (tmp_path / "p.h5ad").exists()


@pytest.mark.parametrize("how", ["reordered", "superset"])
def test_predict_aligns_genes_by_name(how, files, tmp_path, capsys):
    def mutate(a):
        if how == "reordered":
            return a[:, a.var_names[::-1]].copy()
        # zero counts: the library sizes, hence the normalised values, stay the same
        extra = ad.AnnData(np.zeros((a.n_obs, 2), np.int32), obs=a.obs,
                           var={"_": ["x", "y"]}).copy()
        extra.var_names = ["EXTRA1", "EXTRA2"]
        return ad.concat([a, extra], axis=1, merge="same")

    data = _write(tmp_path / "new.h5ad", mutate)
    code, err = _cli(_predict(files, tmp_path, data, ["--perturbations", "G0000"]), capsys)
    assert code == 0, err
    ref = tmp_path / "ref.h5ad"
    assert _cli(_predict(files, tmp_path, files / "good.h5ad", ["--perturbations", "G0000"])[:-1]
                + [str(ref)])[0] == 0
    got, want = ad.read_h5ad(tmp_path / "pred.h5ad"), ad.read_h5ad(ref)
    assert list(got.var_names) == list(want.var_names)
    np.testing.assert_allclose(got.X, want.X, rtol=1e-5, atol=1e-5)


def _eval_args(files, tmp, pred, real):
    return ["evaluate", "--pred", str(pred), "--real", str(real), *KEYS, "--out",
            str(tmp / "ev")]


def _sub(path: Path, out: Path, fn) -> Path:
    a = ad.read_h5ad(path)
    (fn(a) or a).write_h5ad(out)
    return out


EVAL_CASES = [
    ("pred-lacks-genes", "pred", lambda a: a[:, 5:].copy(), "predictions lack 5 real genes"),
    ("pred-lacks-perturbation", "pred",
     lambda a: a[a.obs.perturbation != a.obs.perturbation.iloc[0]].copy(),
     "differ in perturbations"),
    ("pred-without-controls", "pred", lambda a: a[a.obs.perturbation != "control"].copy(),
     "no control"),
    ("real-without-controls", "real", lambda a: a[a.obs.perturbation != "control"].copy(),
     "control 'control' not found in the real data"),
    ("pred-lacks-key", "pred", lambda a: setattr(a, "obs", a.obs.rename(
        columns={"perturbation": "gene"})), "'perturbation' not found"),
    ("pred-has-nan", "pred", lambda a: a.X.__setitem__((0, 0), np.nan), "NaN/Inf"),
]


@pytest.mark.parametrize("case", EVAL_CASES, ids=[c[0] for c in EVAL_CASES])
def test_bad_evaluate_input(case, files, tmp_path, capsys):
    _, which, fn, fragment = case
    pred, real = files / "pred.h5ad", files / "real.h5ad"
    if which == "pred":
        pred = _sub(pred, tmp_path / "p.h5ad", fn)
    else:
        real = _sub(real, tmp_path / "r.h5ad", fn)
    code, err = _cli(_eval_args(files, tmp_path, pred, real), capsys)
    assert code == 2 and fragment in " ".join(err.split()) and "Traceback" not in err, err
    assert not (tmp_path / "ev").exists()


def test_bad_split_file_and_fold(files, tmp_path, capsys):
    base = ["train", "--data", str(files / "good.h5ad"), *KEYS, "--out", str(tmp_path / "m")]
    (tmp_path / "s.json").write_text("{not json")
    code, err = _cli([*base, "--split", str(tmp_path / "s.json")], capsys)
    assert code == 2 and "s.json" in err and "Traceback" not in err, err
    assert _cli(["split", "--data", str(files / "good.h5ad"), *KEYS, "--n-folds", "2", "--out",
                 str(tmp_path / "ok.json")])[0] == 0
    code, err = _cli([*base, "--split", str(tmp_path / "ok.json"), "--fold", "fold7"], capsys)
    assert code == 2 and "fold 'fold7' not in" in " ".join(err.split())
    assert not (tmp_path / "m").exists()


# ---- outputs: existing (refused unless --overwrite), unwritable, wrong kind ----------------
def _commands(files, out: Path) -> dict[str, list[str]]:
    data = str(files / "good.h5ad")
    return {
        "simulate": ["simulate", "--n-genes", "60", "--n-contexts", "1", "--out", str(out)],
        "split": ["split", "--data", data, *KEYS, "--n-folds", "2", "--out", str(out)],
        "train": ["train", "--data", data, *KEYS, "--model", "cell_mean", "--out", str(out)],
        "predict": _predict(files, out.parent, data, ["--perturbations", "G0000"])[:-1]
        + [str(out)],
        "evaluate": _eval_args(files, out.parent, files / "pred.h5ad", files / "real.h5ad")[:-1]
        + [str(out)],
    }


FOLDER_OUTPUT = {"train", "evaluate"}


@pytest.mark.parametrize("command", ["simulate", "split", "train", "predict", "evaluate"])
def test_existing_output_needs_overwrite(command, files, tmp_path, capsys):
    out = tmp_path / "out"
    if command in FOLDER_OUTPUT:
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    else:
        out.write_text("mine")
    args = _commands(files, out)[command]
    code, err = _cli(args, capsys)
    assert code == 2 and "already exists; pass --overwrite" in " ".join(err.split()), err
    assert (out / "keep.txt" if out.is_dir() else out).read_text() == "mine"
    code, err = _cli([*args, "--overwrite"], capsys)
    assert code == 0, err
    assert not out.is_file() or out.read_bytes() != b"mine"


@pytest.mark.parametrize("command", ["simulate", "split", "train", "predict", "evaluate"])
def test_unwritable_output(command, files, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, err = _cli(_commands(files, tmp_path / "afile" / "sub" / "out")[command], capsys)
    assert code == 2 and "is a file, not a folder" in " ".join(err.split()), err


@pytest.mark.parametrize("command", ["simulate", "predict", "train"])
def test_output_of_the_wrong_kind(command, files, tmp_path, capsys):
    out = tmp_path / "out"
    if command in FOLDER_OUTPUT:
        out.write_text("x")
    else:
        out.mkdir()
    code, err = _cli([*_commands(files, out)[command], "--overwrite"], capsys)
    assert code == 2 and "--out needs" in " ".join(err.split()), err


@pytest.mark.parametrize("command", ["demo", "benchmark", "report"])
def test_existing_folder_outputs_refused_before_any_work(command, files, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("mine")
    (out / "summary.csv").write_text("model,score\ncell_mean,0\n")
    args = {"demo": ["demo", "--out", str(out)],
            "benchmark": ["benchmark", "--data", str(files / "good.h5ad"), *KEYS, "--out",
                          str(out)],
            "report": ["report", str(out)]}[command]
    code, err = _cli(args, capsys)
    assert code == 2 and "already exists; pass --overwrite" in " ".join(err.split()), err
    assert (command == "report") == ("--out" not in err), err  # report has no --out to offer
    assert (out / "report.html").read_text() == "mine"


@pytest.mark.parametrize("value, message", [
    ("max_steps=abc", "max_steps='abc' is not an integer"),
    ("ridge=-1", "ridge=-1 is out of range"),
    ("max_epochs=abc", "max_epochs='abc' is not a number or none"),
    ("devices=two", "devices='two' is not auto")])
def test_a_wrong_kind_of_value_fails_before_the_data_is_read(value, message, tmp_path, capsys):
    model = "linear" if value.startswith("ridge") else "transition"
    for command in (["train", "--model", model, "--out", str(tmp_path / "m")],
                    ["benchmark", "--models", model, "--out", str(tmp_path / "b")]):
        code, err = _cli([*command, "--data", str(tmp_path / "absent.h5ad"), *KEYS,
                          "--param", value], capsys)
        assert code == 2 and message in err, err
    assert list(tmp_path.iterdir()) == []

