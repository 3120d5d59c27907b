"""Training and prediction throughput of the set models (cells/s), on CPU (and GPU if present).

Simulated data (no files needed). Training throughput counts perturbed cells per second seen
by the optimiser (steps x sets x set size / seconds, validation included); prediction counts
predicted cells per second (flow: ODE with ``steps`` midpoint steps).

Not done yet: timing arc-state's ST model beside ours at matched width, depth and set size.
arc-state is not installed here (an optional extra at most, never a core dependency); the
last line only says whether it is importable (``arc_state=not_installed|importable``).

    python benchmarks/bench_set_speed.py [--steps 200] [--dim 128] [--depth 4] [--set-size 64]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
import warnings

import torch
from rich.console import Console
from rich.table import Table

from perturbcast.data import read_experiment
from perturbcast.datasets import simulate
from perturbcast.models import get_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--set-size", type=int, default=64)
    ap.add_argument("--n-sets", type=int, default=16)
    ap.add_argument("--genes", type=int, default=2000)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    adata = simulate(n_genes=args.genes, n_singles=20, n_combos=0, n_contexts=2,
                     cells_per_condition=200, control_cells=1000, seed=0)
    exp = read_experiment(adata, "perturbation", "control", context_key="context")
    conds = exp.conditions()
    n_pred = int(conds.n_cells.sum())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    figures: dict[str, str] = {"device": device, "threads": str(torch.get_num_threads()),
                               "dim": str(args.dim), "depth": str(args.depth),
                               "set_size": str(args.set_size)}
    table = Table(title=f"set models on {device}: {exp.describe()}")
    for col in ("model", "space", "train cells/s", "predict cells/s", "fit s"):
        table.add_column(col)
    for name in ("flow", "transition"):
        for space in ("pca", "genes"):
            params = dict(dim=args.dim, depth=args.depth, set_size=args.set_size,
                          n_sets=args.n_sets, max_steps=args.steps, patience=10**6,
                          space=space)
            model = get_model(name, **params)
            t0 = time.perf_counter()
            model.fit(exp)
            fit_s = time.perf_counter() - t0
            train_rate = model.training_summary["steps"] * args.n_sets * args.set_size / fit_s
            t0 = time.perf_counter()
            model.predict(exp, conds)
            pred_rate = n_pred / (time.perf_counter() - t0)
            table.add_row(name, space, f"{train_rate:,.0f}", f"{pred_rate:,.0f}", f"{fit_s:.1f}")
            figures[f"{name}_{space}_train_cells_s"] = f"{train_rate:.0f}"
            figures[f"{name}_{space}_predict_cells_s"] = f"{pred_rate:.0f}"
    figures["arc_state"] = ("importable" if importlib.util.find_spec("state")
                            else "not_installed")
    Console().print(table)
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
