import json
import re
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbcast.cli import main
from perturbcast.eval import METRICS
from perturbcast.models import BASELINES, MODELS


def run(args, capsys):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = e.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_demo_writes_report(tmp_path, capsys, monkeypatch):
    """The demo runs every model, the set models beside the baselines, and says who won.
    (Smaller simulation and training here; benchmarks/bench_demo.py times the real one.)"""
    import perturbcast.datasets
    from perturbcast import demo
    from perturbcast.datasets import simulate

    monkeypatch.setattr(perturbcast.datasets, "simulate", lambda seed: simulate(
        n_genes=80, n_singles=8, n_combos=4, n_contexts=2, cells_per_condition=30,
        control_cells=80, seed=seed))
    monkeypatch.setattr(demo, "DEMO_PARAMS", {"flow": TINY, "transition": TINY, "incontext":
                                              dict(TINY_INCONTEXT, n_heads=2, set_size=8)})
    code, out, err = run(["demo", "--out", str(tmp_path / "demo")], capsys)
    assert code == 0, err
    summary = pd.read_csv(tmp_path / "demo" / "summary.csv")
    assert list(summary.model) == ["cell_mean", *[m for m in MODELS if m != "cell_mean"]]
    assert {"flow", "transition"} <= set(summary.model)
    for f in ("per_perturbation.csv", "fits.csv", "scores.png", "report.md", "split.json"):
        assert (tmp_path / "demo" / f).stat().st_size > 0
    flat = " ".join(out.split())
    assert "best baseline" in flat
    assert re.search(r"(transition|flow) beats the best baseline \w+ by \+|no learned model "
                     r"beats the best baseline \w+ \(", flat), flat
    assert "Verdict:" in (tmp_path / "demo" / "report.md").read_text()


def test_benchmark_outputs(tmp_path, sim_file, capsys):
    args = ["benchmark", "--data", str(sim_file), "--perturbation-key", "perturbation",
            "--control", "control", "--context-key", "context", "--split", "combo",
            "--n-folds", "2", "--models", "additive,linear", "--out", str(tmp_path / "b")]
    code, out, err = run(args, capsys)
    assert code == 0, err
    summary = pd.read_csv(tmp_path / "b" / "summary.csv")
    cols = [*METRICS, "score"]
    assert list(summary.columns) == ["model", *cols, *[f"{c}_sd" for c in cols], "n_seeds",
                                     "embeddings"]
    assert list(summary.model) == ["cell_mean", "additive", "linear"]
    assert (summary.loc[summary.model == "cell_mean", "score"] == 0).all()
    flat = " ".join(out.split())
    assert "baselines only: a deterministic fit" in flat and "--seeds 0,1,2" not in flat
    per = pd.read_csv(tmp_path / "b" / "per_perturbation.csv")
    assert {"model", "fold", "context", "perturbation"} <= set(per.columns)
    assert per.perturbation.str.contains(r"\+").all()
    # the split used is saved and can be passed back in
    code, _, err = run(args[:-2] + ["--split", str(tmp_path / "b" / "split.json"), "--out",
                                     str(tmp_path / "b2")], capsys)
    assert code == 0, err
    pd.testing.assert_frame_equal(summary, pd.read_csv(tmp_path / "b2" / "summary.csv"))


def test_train_predict_evaluate(tmp_path, sim_file, capsys):
    split = tmp_path / "split.json"
    base = ["--data", str(sim_file), "--perturbation-key", "perturbation", "--control",
            "control", "--context-key", "context"]
    assert run(["split", *base, "--out", str(split), "--n-folds", "3"], capsys)[0] == 0
    fold = json.loads(split.read_text())["folds"][0]
    code, _, err = run(["train", *base, "--model", "additive", "--split", str(split),
                        "--fold", "0", "--out", str(tmp_path / "model")], capsys)
    assert code == 0, err
    code, _, err = run(["train", *base, "--model", "blend", "--param", "members=additive,linear",
                        "--split", str(split), "--fold", "0", "--out", str(tmp_path / "blend")],
                       capsys)
    assert code == 0, err
    blend = json.loads((tmp_path / "blend" / "config.json").read_text())
    assert blend["params"]["members"] == ["additive", "linear"]
    assert re.search(r"blend: blend weights (additive|linear):\d\.\d\d.* inner folds",
                     " ".join(err.split()))  # the console wraps long lines
    cfg = json.loads((tmp_path / "model" / "config.json").read_text())
    assert cfg["model"] == "additive" and len(cfg["genes"]) == 80
    assert set(cfg["vocabulary"]) == {p for p, _ in fold["train"]}
    test_perts = sorted({p for p, _ in fold["test"]})
    code, _, err = run(["predict", "--model", str(tmp_path / "model"), "--data", str(sim_file),
                        "--perturbations", ",".join(test_perts), "--contexts", "ctx0",
                        "--n-cells", "30", "--include-controls", "--out",
                        str(tmp_path / "pred.h5ad")], capsys)
    assert code == 0, err
    pred = ad.read_h5ad(tmp_path / "pred.h5ad")
    assert set(pred.obs.perturbation) == {*test_perts, "control"}
    assert list(pred.var_names) == cfg["genes"]
    real = ad.read_h5ad(sim_file)
    keep = real.obs.perturbation.isin([*test_perts, "control"]) & (real.obs.context == "ctx0")
    real[keep.to_numpy()].copy().write_h5ad(tmp_path / "real.h5ad")
    code, out, err = run(["evaluate", "--pred", str(tmp_path / "pred.h5ad"), "--real",
                          str(tmp_path / "real.h5ad"), "--perturbation-key", "perturbation",
                          "--control", "control", "--out", str(tmp_path / "ev")], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert set(METRICS) <= set(summary) and np.isfinite(summary["pearson_delta"])
    per = pd.read_csv(tmp_path / "ev" / "per_perturbation.csv")
    assert sorted(per.perturbation) == test_perts


def test_bad_input_is_one_line_exit_2(tmp_path, sim_file, capsys):
    out_dir = tmp_path / "never"
    code, out, err = run(["benchmark", "--data", str(sim_file), "--perturbation-key",
                          "perturbaton", "--control", "control", "--out", str(out_dir)], capsys)
    assert code == 2
    msg = " ".join(err.split())
    assert "obs column 'perturbaton' not found" in msg and "Traceback" not in err
    assert not out_dir.exists()  # nothing written on failure
    code, _, err = run(["benchmark", "--data", str(sim_file), "--perturbation-key",
                        "perturbation", "--control", "ctrl", "--out", str(out_dir)], capsys)
    assert code == 2 and "Did you mean: 'control'" in " ".join(err.split())
    code, _, err = run(["benchmark", "--data", str(tmp_path / "x.h5ad"), "--perturbation-key",
                        "p", "--control", "c", "--out", str(out_dir)], capsys)
    assert code == 2 and "file not found" in err
    code, _, err = run(["train", "--data", str(sim_file), "--perturbation-key", "perturbation",
                        "--control", "control", "--model", "nope", "--out",
                        str(tmp_path / "m")], capsys)
    assert code == 2 and "unknown model 'nope'" in err and not (tmp_path / "m").exists()


def test_console_script_installed():
    res = subprocess.run([sys.executable, "-m", "perturbcast.cli", "--help"],
                         capture_output=True, text=True)
    assert res.returncode == 0
    for cmd in ("demo", "benchmark", "train", "predict", "evaluate"):
        assert cmd in res.stdout


def test_all_four_real_tasks(tmp_path, shared_data, capsys):
    from perturbcast.datasets.tasks import TASKS

    for name, task in TASKS.items():
        out_dir = tmp_path / name
        code, out, err = run(["benchmark", "--task", name, "--data",
                              str(shared_data / task.filename), "--models", "baselines",
                              "--out", str(out_dir)], capsys)
        assert code == 0, err
        summary = pd.read_csv(out_dir / "summary.csv")
        assert set(summary.model) == set(BASELINES)
        assert summary[["mae", "score", "discrimination_score_l1"]].notna().all().all()
        # a zero predicted delta has no correlation: only the control baseline may be NaN
        learned = summary[summary.model != "control"]
        assert learned.pearson_delta.notna().all(), name


def test_task_data_by_bare_name_is_looked_for_in_the_data_folders(tmp_path, capsys,
                                                                   monkeypatch):
    """`--data FILE.h5ad` (no folder) that is not in the working directory is found in
    $PERTURBCAST_DATA; a name found nowhere is a one-line error that says where it looked."""
    from perturbcast.datasets.tasks import TASKS, task_path

    task = TASKS["kang18_celltype"]
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "mine.h5ad").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERTURBCAST_DATA", str(tmp_path / "folder"))
    assert task_path(task, "mine.h5ad") == (tmp_path / "folder" / "mine.h5ad").resolve()
    assert task_path(task, "sub/mine.h5ad") == Path("sub/mine.h5ad")  # a path: as given
    assert task_path(task, "./mine.h5ad") == Path("mine.h5ad")
    (tmp_path / "mine.h5ad").write_bytes(b"")
    assert task_path(task, "mine.h5ad") == Path("mine.h5ad")  # here first
    code, _, err = run(["benchmark", "--task", "kang18_celltype", "--data", "nowhere.h5ad",
                        "--models", "additive", "--out", str(tmp_path / "t")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "PERTURBCAST_DATA" in err and "leave --data out" in " ".join(err.split())


# the network alone (one training per fit): these tests are about the CLI; the default
# fall-back (base=auto shrink=auto) has its own tests and is trained by `train --model flow`
TINY = dict(max_steps=5, set_size=8, n_sets=2, dim=16, depth=1, n_heads=2, n_latent=8,
            base="none", shrink=1)
TINY_INCONTEXT = dict(pretrain_steps=3, finetune_steps=3, n_modules=4, dim=8, depth=1)
TINY_PARAMS = ["--param", "dim=32", "--param", "depth=1", "--param", "n_heads=2",
               "--param", "max_steps=40", "--param", "set_size=16", "--param", "n_latent=8"]


def test_set_models_through_the_cli(tmp_path, sim_file, capsys):
    """train --model flow|transition with --param, predict from the saved folder, and
    benchmark --models flow,transition beside the baselines."""
    base = ["--data", str(sim_file), "--perturbation-key", "perturbation", "--control",
            "control", "--context-key", "context"]
    fallback = {"flow": [], "transition": ["--param", "base=context_mean", "--param",
                                           "shrink=0.5"]}
    for name in ("flow", "transition"):
        code, _, err = run(["train", *base, "--model", name, *TINY_PARAMS, *fallback[name],
                            "--out", str(tmp_path / name)], capsys)
        assert code == 0, err
        said = "base context_mean (base=context_mean), keeps 0.5 of its correction"
        assert (said in " ".join(err.split())) == (name == "transition"), err
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        assert cfg["model"] == name and cfg["params"]["max_steps"] == 40
        pert = cfg["vocabulary"][0]
        code, _, err = run(["predict", "--model", str(tmp_path / name), "--data",
                            str(sim_file), "--perturbations", pert, "--contexts", "ctx1",
                            "--n-cells", "25", "--out", str(tmp_path / f"{name}.h5ad")], capsys)
        assert code == 0, err
        assert ad.read_h5ad(tmp_path / f"{name}.h5ad").shape == (25, 80)
    code, out, err = run(["benchmark", *base, "--split", "combo", "--n-folds", "2",
                          "--models", "additive,flow,transition", *TINY_PARAMS,
                          "--param", "base=none", "--param", "shrink=1",
                          "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    summary = pd.read_csv(tmp_path / "b" / "summary.csv")
    assert list(summary.model) == ["cell_mean", "additive", "flow", "transition"]
    assert summary[["score", "pearson_delta"]].notna().all().all()
    code, _, err = run(["train", *base, "--model", "flow", "--param", "max_step=3",
                        "--out", str(tmp_path / "never")], capsys)
    assert code == 2 and "max_step" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def _sim_args(sim_file):
    return ["--data", str(sim_file), "--perturbation-key", "perturbation", "--control",
            "control", "--context-key", "context"]


def test_benchmark_runs_every_model_by_default(tmp_path, sim_file, capsys):
    tiny = [f"--param={k}={v}" for k, v in TINY.items()]
    code, out, err = run(["benchmark", *_sim_args(sim_file), "--split", "combo", "--n-folds",
                          "2", *tiny, "--param", "flow.steps=2",
                          *[f"--param=incontext.{k}={v}" for k, v in TINY_INCONTEXT.items()],
                          "--out", str(tmp_path / "a")],
                         capsys)
    assert code == 0, err
    summary = pd.read_csv(tmp_path / "a" / "summary.csv")
    assert set(summary.model) == set(MODELS)
    code, out, err = run(["benchmark", *_sim_args(sim_file), "--split", "combo", "--n-folds",
                          "2", "--models", "baselines", "--out", str(tmp_path / "b")], capsys)
    assert code == 0, err
    assert set(pd.read_csv(tmp_path / "b" / "summary.csv").model) == set(BASELINES)
    assert "baselines only: the best is" in " ".join(out.split())


def test_benchmark_seeds_mean_and_sd(tmp_path, sim_file, capsys):
    tiny = [f"--param={k}={v}" for k, v in TINY.items()]
    code, out, err = run(["benchmark", *_sim_args(sim_file), "--split", "combo", "--n-folds",
                          "2", "--models", "additive,transition", "--seeds", "0,1", *tiny,
                          "--out", str(tmp_path / "s")], capsys)
    assert code == 0, err
    s = pd.read_csv(tmp_path / "s" / "summary.csv").set_index("model")
    assert s.n_seeds.to_dict() == {"cell_mean": 1, "additive": 1, "transition": 2}
    assert s.score_sd["additive"] == 0 and np.isfinite(s.pearson_delta_sd["transition"])
    assert "±" in out and "mean ± sd over 2 seeds" in " ".join(out.split())
    assert "seed spread ±" in " ".join(out.split())
    fits = pd.read_csv(tmp_path / "s" / "fits.csv")
    assert len(fits[fits.model == "transition"]) == 2 * 2 and (fits.fit_s > 0).all()
    report = (tmp_path / "s" / "report.md").read_text()
    assert " ± " in report and "Verdict:" in report


@pytest.mark.parametrize("extra", [["--split", "combo"], ["--n-folds", "3"],
                                   ["--min-cells", "10"], ["--drop-small-groups"],
                                   ["--perturbation-key", "gene"], ["--control", "ctrl"],
                                   ["--context-key", "line"], ["--batch-key", "b"],
                                   ["--layer", "counts"]])
def test_task_refuses_options_it_would_ignore(tmp_path, capsys, extra):
    code, _, err = run(["benchmark", "--task", "norman19_combo", *extra, "--models",
                        "additive", "--out", str(tmp_path / "t")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"drop {extra[0]}" in " ".join(err.split())
    assert not (tmp_path / "t").exists()


def test_param_is_per_model(tmp_path, sim_file, capsys):
    code, out, err = run(["benchmark", *_sim_args(sim_file), "--split", "combo", "--models",
                          "additive,flow", "--param", "transition.max_steps=3", "--out",
                          str(tmp_path / "x")], capsys)
    assert code == 2 and "'transition' is not among the selected models" in " ".join(err.split())
    code, _, err = run(["benchmark", *_sim_args(sim_file), "--split", "combo", "--models",
                        "additive", "--param", "max_steps=3", "--out", str(tmp_path / "x")],
                       capsys)
    assert code == 2 and "no selected model takes 'max_steps'" in " ".join(err.split())
    assert not (tmp_path / "x").exists()
    code, _, err = run(["train", *_sim_args(sim_file), "--model", "flow", "--param",
                        "flow.max_steps=3", "--param", "dim=16", "--param", "depth=1",
                        "--param", "shrink=1", "--out", str(tmp_path / "m")], capsys)
    assert code == 0, err
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["params"]["max_steps"] == 3 and cfg["params"]["dim"] == 16
    code, _, err = run(["train", *_sim_args(sim_file), "--model", "linear", "--param",
                        "max_steps=3", "--out", str(tmp_path / "l")], capsys)
    assert code == 2 and "no selected model takes 'max_steps'" in " ".join(err.split())
