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
    # the same numbers as scoring against a real file cut to the predicted conditions
    real = ad.read_h5ad(sim_file)
    pred = ad.read_h5ad(tmp / "additive.h5ad")
    base = ad.read_h5ad(tmp / "cell_mean.h5ad")
    cut = real[real.obs.perturbation.isin(set(pred.obs.perturbation)).to_numpy()].copy()
    want = evaluate(pred, cut, "perturbation", "control")
    for m in VCC_METRICS:
        assert alone[m] == pytest.approx(want.summary[m], rel=1e-9, nan_ok=True)
    code, out, err = run([*ev, "--only-predicted", "--baseline", str(tmp / "cell_mean.h5ad"),
                          "--out", str(tmp / "ev2")], capsys)
    assert code == 0, err
    summary = json.loads((tmp / "ev2" / "summary.json").read_text())
    score, parts = vcc_score(want.summary, evaluate(base, cut, "perturbation",
                                                     "control").summary)
    assert summary["score"] == pytest.approx(score) and np.isfinite(score) and score > 0
    assert {f"score_{m}" for m in parts} | {f"baseline_{m}" for m in VCC_METRICS} <= set(summary)
    # a reference that predicted other conditions cannot be compared
    other = base[base.obs.perturbation != base.obs.perturbation.iloc[0]].copy()
    other.write_h5ad(tmp / "other.h5ad")
    code, _, err = run([*ev, "--only-predicted", "--baseline", str(tmp / "other.h5ad"),
                        "--out", str(tmp / "never")], capsys)
    assert code == 2 and "predicts other perturbations than --pred" in err
