"""Convert + one training epoch of ``transition`` from stores of growing size.

For each size a synthetic screen (1,000 genes, ~6% non-zero, 200 perturbations x 2 contexts,
raw counts) is written as an h5ad, converted to a store, and ``transition`` (default model
size; no validation split) is trained on the store for one epoch: enough steps that the
perturbed sets cover the perturbed cells once (``n_sets`` x ``set_size`` cells per step). The
sets come from the store sampler (asserted); nothing loads the matrix whole. Each stage runs
in a fresh process so its peak RSS (VmHWM: anonymous memory plus mapped file pages) is its
own; the peak anonymous memory is sampled every 20 ms beside it. The training stage also times
the loader alone (the batches' reads and latent encoding, inside training) to report loader
cells/s over training cells/s (training: the optimisation loop, set-up excluded). Writes
``scaling.png`` (time and peak memory vs cells) and ends with one key=value line.

    OMP_NUM_THREADS=1 python benchmarks/scaling.py [--sizes 10000,100000,1000000] [--out DIR]
        [--keep DIR]   # keep the data and each stage's figures; a rerun reuses finished stages
        [--max-steps N --cap-from 10000000]   # cap the epoch of the largest sizes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_GENES, SET_SIZE, N_SETS = 1000, 64, 16  # the model's defaults: set_size=64, n_sets=16
MODEL = dict(set_size=SET_SIZE, n_sets=N_SETS, val_fraction=0.0, patience=1000, max_epochs=None)


class AnonPeak:
    """Peak anonymous resident memory (RssAnon) of this process, sampled every 20 ms."""

    def __init__(self) -> None:
        import threading

        self.peak_kb = 0
        threading.Thread(target=self._poll, daemon=True).start()

    def _poll(self) -> None:
        while True:
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            time.sleep(0.02)


def make_h5ad(path: Path, n_cells: int, seed: int = 0, chunk: int = 1_000_000) -> None:
    """Write the synthetic screen in chunks of ``chunk`` cells (10^7 cells fit in memory)."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp
    from anndata.io import sparse_dataset, write_elem

    rng = np.random.default_rng(seed)
    labels = np.array(["control"] + [f"P{i:03d}" for i in range(200)])
    pert = labels[np.where(rng.random(n_cells) < 0.1, 0, rng.integers(1, 201, n_cells))]
    ctx = np.array(["c0", "c1"])[rng.integers(0, 2, n_cells)]
    obs = pd.DataFrame({"perturbation": pd.Categorical(pert), "context": pd.Categorical(ctx)},
                       index=[f"c{i}" for i in range(n_cells)])
    ad.AnnData(obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)])
               ).write_h5ad(path)
    del obs, pert, ctx
    with h5py.File(path, "a") as f:
        for start in range(0, n_cells, chunk):
            m = min(chunk, n_cells - start)
            nnz = rng.poisson(0.06 * N_GENES, m)
            indptr = np.r_[0, np.cumsum(nnz)]
            col = rng.integers(0, N_GENES, indptr[-1])
            x = sp.csr_matrix((rng.poisson(2.0, indptr[-1]).astype(np.float32) + 1,
                               (np.repeat(np.arange(m), nnz), col)), shape=(m, N_GENES))
            if start == 0:
                write_elem(f, "X", x)
            else:
                sparse_dataset(f["X"]).append(x)


def stage(name: str, work: Path, n_cells: int, max_steps: int | None = None) -> dict:
    """Run one stage in this process; returns seconds and peak RSS (MB). ``max_steps`` caps
    the training epoch (its time is then extrapolated from the steps run, and reported)."""
    t0 = time.perf_counter()
    anon = AnonPeak()
    out: dict = {}
    if name == "make":
        make_h5ad(work / "in.h5ad", n_cells)
    elif name == "convert":
        from perturbcast.data.convert import convert

        convert([work / "in.h5ad"], work / "store", "perturbation", "control",
                context_key="context")
    elif name == "train":
        import warnings

        import perturbcast.models.set_model as set_model
        from perturbcast import read_experiment
        from perturbcast.models import get_model
        from perturbcast.models.store_set_batches import StoreTrainingSets

        timed = {"loader": 0.0, "train": 0.0}

        def timer(fn, key):
            def run(*args, **kwargs):
                t = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    timed[key] += time.perf_counter() - t
            return run

        StoreTrainingSets.__getitem__ = timer(StoreTrainingSets.__getitem__, "loader")
        set_model.train_network = timer(set_model.train_network, "train")
        exp = read_experiment(work / "store", "perturbation", "control", context_key="context",
                              drop_small_groups=True)
        epoch = max(1, math.ceil(int((~exp.is_control).sum()) / (N_SETS * SET_SIZE)))
        steps = min(epoch, max_steps or epoch)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_model("transition", max_steps=steps, **MODEL).fit(exp)
        assert model.training_summary["sampler"] == "store", model.training_summary
        out.update(steps=steps, epoch_steps=epoch, loader_seconds=timed["loader"],
                   train_seconds=timed["train"])
    out["seconds"] = time.perf_counter() - t0
    if out.get("steps", 0) < out.get("epoch_steps", 0):  # capped: extrapolate the loop
        out["measured_seconds"] = out["seconds"]
        out["seconds"] += out["train_seconds"] * (out["epoch_steps"] / out["steps"] - 1)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["peak_anon_mb"] = anon.peak_kb / 1024
    return out


def run_stage(name: str, work: Path, n_cells: int, max_steps: int = 0) -> dict:
    """Run a stage in a fresh process; with a kept work folder, a stage that finished before
    (its ``NAME.json`` is there) is not run again and its recorded figures are used."""
    done = work / f"{name}.json"
    if done.exists():
        return json.loads(done.read_text())
    cmd = [sys.executable, __file__, "--stage", name, "--work", str(work), "--cells",
           str(n_cells), "--max-steps", str(max_steps)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"stage {name} failed:\n{res.stderr[-2000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    done.write_text(json.dumps(out))
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.array([r["cells"] for r in rows], float)
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, label, color in (("convert", "convert", "C0"), ("train", "train one epoch", "C1")):
        ax[0].loglog(n, [r[key]["seconds"] for r in rows], "o-", color=color, label=label)
        ax[1].semilogx(n, [r[key]["peak_rss_mb"] for r in rows], "o-", color=color,
                       label=f"{label}: RSS")
        ax[1].semilogx(n, [r[key]["peak_anon_mb"] for r in rows], "s--", color=color,
                       label=f"{label}: anonymous")
    t = rows[-1]["train"]["seconds"]
    ax[0].loglog(n, t * n / n[-1], ":", color="grey", label="linear in cells")
    ax[1].axhline(2048, color="red", lw=0.8, ls=":", label="goal: 2 GB")
    ax[0].set(xlabel="cells", ylabel="seconds")
    ax[1].set(xlabel="cells", ylabel="peak memory (MB)", ylim=(0, None))
    ax[0].legend(fontsize=7)
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--out", default=".")
    ap.add_argument("--keep", default=None, help="keep each size's data and stage results "
                    "in KEEP/cells<N> and reuse the stages already done there")
    ap.add_argument("--max-steps", type=int, default=0, help="cap the training epoch of "
                    "sizes >= --cap-from at this many steps (epoch time extrapolated)")
    ap.add_argument("--cap-from", type=int, default=10**7)
    ap.add_argument("--stage", default=None)
    ap.add_argument("--work", default=None)
    ap.add_argument("--cells", type=int, default=0)
    args = ap.parse_args()
    if args.stage:
        print(json.dumps(stage(args.stage, Path(args.work), args.cells, args.max_steps)))
        return
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        with contextlib.ExitStack() as stack:
            work = (Path(args.keep) / f"cells{n}" if args.keep else
                    Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.out))))
            work.mkdir(parents=True, exist_ok=True)
            run_stage("make", work, n)
            row = {"cells": n, "convert": run_stage("convert", work, n),
                   "train": run_stage("train", work, n,
                                      args.max_steps if n >= args.cap_from else 0)}
        t = row["train"]
        cells = t["steps"] * N_SETS * SET_SIZE * 2  # perturbed + matched control cells
        t["cells_per_s"] = cells / t["train_seconds"]
        t["loader_cells_per_s"] = cells / t["loader_seconds"]
        rows.append(row)
        capped = (f" of {t['epoch_steps']} (capped; epoch time extrapolated)"
                  if t["steps"] < t.get("epoch_steps", 0) else "")
        print(f"{n:>10,} cells: convert {row['convert']['seconds']:6.1f}s "
              f"({row['convert']['peak_rss_mb']:5.0f} MB), train {t['steps']}{capped} steps "
              f"{t['seconds']:6.1f}s (loop {t['train_seconds']:.1f}s, loader "
              f"{t['loader_seconds']:.1f}s; peak RSS {t['peak_rss_mb']:5.0f} MB, anonymous "
              f"{t['peak_anon_mb']:5.0f} MB), {t['cells_per_s']:,.0f} training cells/s, "
              f"loader {t['loader_cells_per_s']:,.0f} cells/s", flush=True)
    plot(rows, Path(args.out) / "scaling.png")
    last = rows[-1]
    print("sizes=" + ",".join(str(r["cells"]) for r in rows)
          + " convert_s=" + ",".join(f"{r['convert']['seconds']:.1f}" for r in rows)
          + " train_epoch_s=" + ",".join(f"{r['train']['seconds']:.1f}" for r in rows)
          + " train_steps=" + ",".join(
              f"{r['train']['steps']}/{r['train'].get('epoch_steps', r['train']['steps'])}"
              for r in rows)
          + " convert_rss_mb=" + ",".join(f"{r['convert']['peak_rss_mb']:.0f}" for r in rows)
          + " train_rss_mb=" + ",".join(f"{r['train']['peak_rss_mb']:.0f}" for r in rows)
          + " train_anon_mb=" + ",".join(f"{r['train']['peak_anon_mb']:.0f}" for r in rows)
          + " loader_over_train=" + ",".join(
              f"{r['train']['loader_cells_per_s'] / r['train']['cells_per_s']:.1f}"
              for r in rows)
          + f" train_cells_per_s={last['train']['cells_per_s']:.0f}"
          + f" loader_cells_per_s={last['train']['loader_cells_per_s']:.0f}")


if __name__ == "__main__":
    main()
