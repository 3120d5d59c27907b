"""From a split to scores on the command line: train on a fold, predict its held-out
conditions (``predict --split``), score them against the whole real file
(``evaluate --only-predicted``) with the VCC score against a reference (``--baseline``)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest

from perturbcast.cli import main
from perturbcast.eval import evaluate
from perturbcast.eval.evaluate import VCC_METRICS, vcc_score

KEYS = ["--perturbation-key", "perturbation", "--control", "control"]


def run(args, capsys):
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    cap = capsys.readouterr()
    return code, cap.out, " ".join(cap.err.split())  # the console wraps long lines


@pytest.fixture(scope="module")
def fold_models(tmp_path_factory, sim_file):
    """A split of the simulated file and additive and cell_mean models trained on fold 1."""
    tmp = tmp_path_factory.mktemp("fold")
    data = ["--data", str(sim_file), *KEYS, "--context-key", "context"]
    for args in (["split", *data, "--n-folds", "3", "--out", str(tmp / "split.json")],
                 *(["train", *data, "--model", m, "--split", str(tmp / "split.json"),
                    "--fold", "1", "--out", str(tmp / m)] for m in ("additive", "cell_mean"))):
        try:
            main(args)
        except SystemExit as e:
            assert not e.code
    return tmp


def test_predict_split_fold_predicts_exactly_the_held_out_conditions(fold_models, sim_file,
                                                                     capsys):
    tmp = fold_models
    test = {tuple(t) for t in json.loads((tmp / "split.json").read_text())["folds"][1]["test"]}
    code, _, err = run(["predict", "--model", str(tmp / "additive"), "--data", str(sim_file),
                        "--split", str(tmp / "split.json"), "--fold", "1", "--n-cells", "20",
                        "--include-controls", "--out", str(tmp / "pred.h5ad")], capsys)
    assert code == 0, err
    pred = ad.read_h5ad(tmp / "pred.h5ad")
    cells = pred[pred.obs.perturbation != "control"].obs
    assert set(zip(cells.perturbation, cells.context, strict=True)) == test
    code, _, err = run(["predict", "--model", str(tmp / "additive"), "--data", str(sim_file),
                        "--split", str(tmp / "split.json"), "--perturbations", "G0000",
                        "--out", str(tmp / "never.h5ad")], capsys)
    assert code == 2 and "drop --perturbations/--contexts" in err
    code, _, err = run(["predict", "--model", str(tmp / "additive"), "--data", str(sim_file),
                        "--split", str(tmp / "split.json"), "--fold", "fold9",
                        "--out", str(tmp / "never.h5ad")], capsys)
    assert code == 2 and "fold 'fold9' not in" in err and not (tmp / "never.h5ad").exists()


def test_evaluate_only_predicted_and_the_vcc_score_against_a_baseline(fold_models, sim_file,
                                                                      capsys):
    tmp = fold_models
    for m in ("additive", "cell_mean"):
        code, _, err = run(["predict", "--model", str(tmp / m), "--data", str(sim_file),
                            "--split", str(tmp / "split.json"), "--fold", "1", "--n-cells",
                            "30", "--include-controls", "--out", str(tmp / f"{m}.h5ad")],
                           capsys)
        assert code == 0, err
    ev = ["evaluate", "--pred", str(tmp / "additive.h5ad"), "--real", str(sim_file), *KEYS]
    # the whole real file has perturbations nobody predicted: refused, with the way out
    code, _, err = run([*ev, "--out", str(tmp / "never")], capsys)
    assert code == 2 and "evaluate --only-predicted" in err and not (tmp / "never").exists()
    code, _, err = run([*ev, "--only-predicted", "--out", str(tmp / "ev")], capsys)
    assert code == 0 and "--only-predicted: scoring the" in err, err
    assert "no VCC score" in err
    alone = json.loads((tmp / "ev" / "summary.json").read_text())
    assert "score" not in alone
    # the same numbers as scoring a real file cut to the predicted conditions (per context:
    # both files have the context column the model was trained with)
    real = ad.read_h5ad(sim_file)
    pred = ad.read_h5ad(tmp / "additive.h5ad")
    base = ad.read_h5ad(tmp / "cell_mean.h5ad")
    want = evaluate(pred, _cut(real, pred), "perturbation", "control")
    assert len(want.by_context) == 2
    for m in VCC_METRICS:
        assert alone[m] == pytest.approx(want.summary[m], rel=1e-9, nan_ok=True)
    code, out, err = run([*ev, "--only-predicted", "--baseline", str(tmp / "cell_mean.h5ad"),
                          "--out", str(tmp / "ev2")], capsys)
    assert code == 0, err
    summary = json.loads((tmp / "ev2" / "summary.json").read_text())
    ref = evaluate(base, _cut(real, pred), "perturbation", "control")
    per_ctx = [vcc_score(want.by_context[c].summary, ref.by_context[c].summary)
               for c in want.by_context]  # as the benchmark: the mean of the contexts' scores
    score = float(np.mean([v for v, _ in per_ctx]))
    assert summary["score"] == pytest.approx(score) and np.isfinite(score) and score > 0
    assert {f"score_{m}" for m in VCC_METRICS} | {f"baseline_{m}" for m in VCC_METRICS} <= set(
        summary)
    # a reference that predicted other conditions cannot be compared: here one condition
    # (perturbation, context) fewer, its perturbation still predicted in the other context
    drop = _one_condition(base)
    base[~drop].copy().write_h5ad(tmp / "other.h5ad")
    code, _, err = run([*ev, "--only-predicted", "--baseline", str(tmp / "other.h5ad"),
                        "--out", str(tmp / "never")], capsys)
    assert code == 2 and "predicts other conditions than --pred" in err


def _one_condition(a):
    """Mask of the cells of one perturbed (perturbation, context) pair of ``a``."""
    first = a.obs[a.obs.perturbation != "control"].iloc[0]
    return ((a.obs.perturbation == first.perturbation) & (a.obs.context == first.context)
            ).to_numpy()


def _cut(real, pred):
    """The real cells of the predicted (perturbation, context) pairs, and all controls."""
    pairs = set(zip(pred.obs.perturbation, pred.obs.context, strict=True))
    keep = [(p, c) in pairs or p == "control"
            for p, c in zip(real.obs.perturbation, real.obs.context, strict=True)]
    return real[np.array(keep)].copy()


def test_only_predicted_keeps_conditions_not_just_perturbations(fold_models, sim_file, capsys):
    """A prediction without one (perturbation, context) pair, its perturbation predicted in
    the other context: --only-predicted leaves that pair's real cells out too."""
    tmp = fold_models
    code, _, err = run(["predict", "--model", str(tmp / "additive"), "--data", str(sim_file),
                        "--split", str(tmp / "split.json"), "--fold", "1", "--n-cells", "30",
                        "--include-controls", "--out", str(tmp / "full.h5ad")], capsys)
    assert code == 0, err
    pred = ad.read_h5ad(tmp / "full.h5ad")
    part = pred[~_one_condition(pred)].copy()
    part.write_h5ad(tmp / "part.h5ad")
    code, _, err = run(["evaluate", "--pred", str(tmp / "part.h5ad"), "--real", str(sim_file),
                        *KEYS, "--only-predicted", "--out", str(tmp / "ev_part")], capsys)
    assert code == 0, err
    got = json.loads((tmp / "ev_part" / "summary.json").read_text())
    want = evaluate(part, _cut(ad.read_h5ad(sim_file), part), "perturbation", "control")
    assert got["mae"] == pytest.approx(want.summary["mae"], rel=1e-9)


def test_predict_split_refuses_a_model_trained_on_those_conditions(fold_models, sim_file,
                                                                   capsys):
    """The additive model was trained on fold 1: fold 0's held-out conditions were in its
    training, so predicting them for scoring would score training data."""
    tmp = fold_models
    code, _, err = run(["predict", "--model", str(tmp / "additive"), "--data", str(sim_file),
                        "--split", str(tmp / "split.json"), "--fold", "0",
                        "--out", str(tmp / "leak.h5ad")], capsys)
    assert code == 2 and "were in this model's training" in err and "--fold fold0" in err
    assert not (tmp / "leak.h5ad").exists()


def test_predict_split_made_with_another_context_key_is_one_line(tmp_path, fold_models,
                                                                 sim_file, capsys):
    """A split made without --context-key (every context 'all') and a model with one: the
    fold's conditions are not in the data read with the model's key."""
    data = ["--data", str(sim_file), *KEYS]
    assert run(["split", *data, "--n-folds", "3", "--out", str(tmp_path / "flat.json")],
               capsys)[0] == 0
    code, _, err = run(["predict", "--model", str(fold_models / "additive"), "--data",
                        str(sim_file), "--split", str(tmp_path / "flat.json"), "--out",
                        str(tmp_path / "never.h5ad")], capsys)
    assert code == 2 and "context key context" in err and "--context-key" in err, err
    assert not (tmp_path / "never.h5ad").exists()


def test_predict_split_with_a_model_saved_before_the_record_says_it_cannot_check(
        tmp_path, fold_models, sim_file, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(fold_models / "additive", old)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["trained_conditions"]
    (old / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="saved without its training conditions"):
        code, _, err = run(["predict", "--model", str(old), "--data", str(sim_file), "--split",
                            str(fold_models / "split.json"), "--fold", "1", "--out",
                            str(tmp_path / "p.h5ad")], capsys)
    assert code == 0, err
