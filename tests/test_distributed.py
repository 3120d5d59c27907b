"""DDP on 2 CPU processes (gloo, launched with torchrun) equals one process with the same
global batch. Slow-ish (two fresh interpreters import torch + lightning: ~20-60 s on 2 busy
cores); set PERTURBCAST_SKIP_DDP=1 to skip it."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from perturbcast.data.convert import convert
from perturbcast.train.distributed import rank_share

HERE = Path(__file__).resolve().parent


def test_rank_share_splits_a_global_batch_evenly(monkeypatch):
    assert rank_share(6) == slice(0, 6)  # not distributed: everything
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 3)
    shares = []
    for r in range(3):
        monkeypatch.setattr(dist, "get_rank", lambda r=r: r)
        shares.append(set(range(6)[rank_share(6)]))
    assert shares == [{0, 1}, {2, 3}, {4, 5}]
    with pytest.raises(ValueError, match="does not divide"):
        rank_share(4)


@pytest.mark.skipif(os.environ.get("PERTURBCAST_SKIP_DDP") == "1", reason="asked to skip")
def test_ddp_two_processes_equal_one_process(tmp_path):
    sys.path.insert(0, str(HERE))
    from _ddp_worker import tiny_screen, train_and_record

    tiny_screen().write_h5ad(tmp_path / "tiny.h5ad")
    store = convert([tmp_path / "tiny.h5ad"], tmp_path / "store", "perturbation", "control")

    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "_ddp_worker.py"), str(tmp_path), "2", "ddp", str(store)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    for prefix, source in (("", None), ("store_", str(store))):  # in memory; store sampler
        _check_ranks_match_one_process(tmp_path, prefix, *train_and_record(1, store=source))


def _check_ranks_match_one_process(tmp_path, prefix, weights, seen):
    ranks = [np.load(tmp_path / f"{prefix}rank{r}.npz") for r in range(2)]
    # each step, the ranks got disjoint halves of the single process's global batch
    assert ranks[0]["seen"].shape == ranks[1]["seen"].shape == (6, 2, 8, 8)
    np.testing.assert_allclose(np.concatenate([r["seen"] for r in ranks], axis=1), seen,
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(ranks[0]["seen"], ranks[1]["seen"])
    # and the trained weights match (gradients averaged over ranks = global-batch gradient)
    for k, v in weights.items():
        np.testing.assert_allclose(ranks[0][f"w.{k}"], v, rtol=1e-4, atol=1e-5, err_msg=k)
        np.testing.assert_allclose(ranks[1][f"w.{k}"], v, rtol=1e-4, atol=1e-5, err_msg=k)


@pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP runs on CUDA machines")
def test_fsdp_without_a_gpu_is_a_one_line_error(sim_exp, tmp_path, sim_adata):
    from perturbcast.cli import main
    from perturbcast.errors import InputError
    from perturbcast.models import get_model

    with pytest.raises(InputError, match="needs CUDA GPUs"):  # Lightning refuses FSDP on CPU
        get_model("transition", strategy="fsdp", max_steps=1).fit(sim_exp)
    sim_adata.write_h5ad(tmp_path / "sim.h5ad")
    with pytest.raises(SystemExit) as exc:
        main(["train", "--data", str(tmp_path / "sim.h5ad"), "--perturbation-key",
              "perturbation", "--control", "control", "--model", "flow", "--strategy", "fsdp",
              "--out", str(tmp_path / "m")])
    assert exc.value.code == 2 and not (tmp_path / "m").exists()
