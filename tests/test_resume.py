"""`perturbcast train --resume` after `kill -9`: the same weights and predictions as a run never
interrupted (CPU, fixed seed), tested with a real subprocess killed mid-training."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch

from perturbcast.cli import main

TINY = ["--param", "max_steps=250", "--param", "dim=16", "--param", "depth=1",
        "--param", "n_heads=2", "--param", "set_size=16", "--param", "n_sets=4",
        "--param", "n_latent=8", "--param", "patience=50"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


@pytest.fixture(scope="module")
def data(sim_adata, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("resume") / "sim.h5ad"
    a = sim_adata.copy()
    del a.uns["true_effects"]
    a.write_h5ad(path)
    return path


def _train(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "perturbcast.cli", "train", "--data", str(data),
            "--perturbation-key", "perturbation", "--control", "control", "--context-key",
            "context", "--model", "transition", *TINY, "--checkpoint-every", "20",
            "--out", str(out), *extra]


def _cli(args: list[str]) -> int:
    """Run the CLI in this process on one thread, as the subprocesses (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(args)
    except SystemExit as e:
        return e.code or 0
    finally:
        torch.set_num_threads(threads)
    return 0


def _predict(model: Path, data: Path, out: Path) -> np.ndarray:
    assert _cli(["predict", "--model", str(model), "--data", str(data), "--contexts", "ctx0",
                 "--n-cells", "20", "--out", str(out)]) == 0
    return np.asarray(ad.read_h5ad(out).X)


@pytest.fixture(scope="module")
def whole(data, tmp_path_factory) -> Path:
    """The uninterrupted run, in a subprocess with the resumed run's environment (one thread
    for every library: in this process numpy's BLAS may use more, and on some CPUs a
    different thread count rounds differently)."""
    out = tmp_path_factory.mktemp("whole") / "whole"
    res = subprocess.run(_train(data, out), env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    return out


@pytest.mark.parametrize("killed_in", ["", "probe0"])  # the model's training; shrink's probe
def test_resume_after_kill_matches_an_uninterrupted_run(data, whole, tmp_path, killed_in):
    resumed = tmp_path / "resumed"
    ckpt = tmp_path / ".resumed.resume" / killed_in / "last.ckpt"
    proc = subprocess.Popen(_train(data, resumed), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training ended before it could be killed"
    assert ckpt.exists() and not resumed.exists()
    # without --resume a new run would start over; with it, it continues from last.ckpt
    res = subprocess.run(_train(data, resumed, "--resume"), env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    said = re.search(r"resuming from step (\d+)", res.stderr)  # the user sees where
    assert said and int(said.group(1)) > 0, res.stderr
    assert not ckpt.parent.exists()  # checkpoints are removed once the model is saved
    a, b = np.load(whole / "state.npz"), np.load(resumed / "state.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    summary_a = json.loads((whole / "training.json").read_text())
    summary_b = json.loads((resumed / "training.json").read_text())
    assert summary_a == summary_b and summary_a["steps"] > 20
    np.testing.assert_array_equal(_predict(whole, data, tmp_path / "pa.h5ad"),
                                  _predict(resumed, data, tmp_path / "pb.h5ad"))


def test_resume_without_a_checkpoint_is_refused(data, tmp_path, capsys):
    assert _cli(_train(data, tmp_path / "m", "--resume")[3:]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint to resume from" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()


def test_sigterm_exits_143_with_a_line_on_how_to_resume(data, tmp_path):
    """Lightning turns SIGTERM into exit code 0; a stopped run must not look finished."""
    out = tmp_path / "m"
    ckpt = tmp_path / ".m.resume" / "last.ckpt"
    proc = subprocess.Popen(_train(data, out, "--param", "base=none", "--param", "shrink=1"),
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    said = " ".join(err.split())
    assert "received SIGTERM at step" in said and "--resume" in said and "Traceback" not in err
    assert ckpt.exists() and not out.exists()
