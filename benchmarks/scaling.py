"""Convert + one training epoch of ``transition`` from stores of growing size.

For each size a synthetic screen (1,000 genes, ~6% non-zero, 200 perturbations x 2 contexts,
raw counts) is written as an h5ad, converted to a store, and ``transition`` is trained on the
store for one epoch: enough steps that the perturbed sets cover the perturbed cells once
(``n_sets`` x ``set_size`` cells per step), with ``memory_budget_gb=0`` so training rows are
read per batch (the out-of-core path). Each stage runs in a fresh process so its peak RSS is
its own. Writes ``scaling.png`` (time and peak RSS vs cells) and ends with one key=value line.

    OMP_NUM_THREADS=1 python benchmarks/scaling.py [--sizes 10000,30000,100000] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_GENES, SET_SIZE, N_SETS = 1000, 64, 8
MODEL = dict(set_size=SET_SIZE, n_sets=N_SETS, dim=64, depth=2, n_heads=4, n_latent=32,
             memory_budget_gb=0.0, val_fraction=0.0, patience=1000)


def make_h5ad(path: Path, n_cells: int, seed: int = 0) -> None:
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    labels = np.array(["control"] + [f"P{i:03d}" for i in range(200)])
    pert = labels[np.where(rng.random(n_cells) < 0.1, 0, rng.integers(1, 201, n_cells))]
    ctx = np.array(["c0", "c1"])[rng.integers(0, 2, n_cells)]
    nnz = rng.poisson(0.06 * N_GENES, n_cells)
    indptr = np.r_[0, np.cumsum(nnz)]
    row = np.repeat(np.arange(n_cells), nnz)
    col = rng.integers(0, N_GENES, indptr[-1])
    x = sp.csr_matrix((rng.poisson(2.0, indptr[-1]).astype(np.float32) + 1, (row, col)),
                      shape=(n_cells, N_GENES))
    obs = pd.DataFrame({"perturbation": pert, "context": ctx},
                       index=[f"c{i}" for i in range(n_cells)])
    ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)])
               ).write_h5ad(path)


def stage(name: str, work: Path, n_cells: int) -> dict:
    """Run one stage in this process; returns seconds and peak RSS (MB)."""
    t0 = time.perf_counter()
    out: dict = {}
    if name == "make":
        make_h5ad(work / "in.h5ad", n_cells)
    elif name == "convert":
        from perturbcast.data.convert import convert

        convert([work / "in.h5ad"], work / "store", "perturbation", "control",
                context_key="context")
    elif name == "train":
        import warnings

        from perturbcast import read_experiment
        from perturbcast.models import get_model

        exp = read_experiment(work / "store", "perturbation", "control", context_key="context",
                              drop_small_groups=True)
        steps = max(1, math.ceil(int((~exp.is_control).sum()) / (N_SETS * SET_SIZE)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            get_model("transition", max_steps=steps, **MODEL).fit(exp)
        out["steps"] = steps
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_stage(name: str, work: Path, n_cells: int) -> dict:
    cmd = [sys.executable, __file__, "--stage", name, "--work", str(work), "--cells",
           str(n_cells)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"stage {name} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["cells"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, label in (("convert", "convert"), ("train", "train one epoch")):
        ax[0].loglog(n, [r[key]["seconds"] for r in rows], "o-", label=label)
        ax[1].semilogx(n, [r[key]["peak_rss_mb"] for r in rows], "o-", label=label)
    ax[0].set(xlabel="cells", ylabel="seconds")
    ax[1].set(xlabel="cells", ylabel="peak RSS (MB)")
    ax[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,30000,100000")
    ap.add_argument("--out", default=".")
    ap.add_argument("--stage", default=None)
    ap.add_argument("--work", default=None)
    ap.add_argument("--cells", type=int, default=0)
    args = ap.parse_args()
    if args.stage:
        print(json.dumps(stage(args.stage, Path(args.work), args.cells)))
        return
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(dir=args.out) as tmp:
            work = Path(tmp)
            run_stage("make", work, n)
            row = {"cells": n, "convert": run_stage("convert", work, n),
                   "train": run_stage("train", work, n)}
        t = row["train"]
        t["cells_per_s"] = t["steps"] * N_SETS * SET_SIZE * 2 / t["seconds"]
        rows.append(row)
        print(f"{n:>10,} cells: convert {row['convert']['seconds']:6.1f}s "
              f"({row['convert']['peak_rss_mb']:5.0f} MB), train {t['steps']} steps "
              f"{t['seconds']:6.1f}s ({t['peak_rss_mb']:5.0f} MB), "
              f"{t['cells_per_s']:,.0f} training cells/s", flush=True)
    plot(rows, Path(args.out) / "scaling.png")
    last = rows[-1]
    print("sizes=" + ",".join(str(r["cells"]) for r in rows)
          + " convert_s=" + ",".join(f"{r['convert']['seconds']:.1f}" for r in rows)
          + " train_epoch_s=" + ",".join(f"{r['train']['seconds']:.1f}" for r in rows)
          + " convert_rss_mb=" + ",".join(f"{r['convert']['peak_rss_mb']:.0f}" for r in rows)
          + " train_rss_mb=" + ",".join(f"{r['train']['peak_rss_mb']:.0f}" for r in rows)
          + f" train_cells_per_s={last['train']['cells_per_s']:.0f}")


if __name__ == "__main__":
    main()
