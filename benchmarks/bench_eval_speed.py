"""Evaluation speed: perturbcast vs cell-eval 0.8.x on the same pred/real AnnData.

Default case: 100 perturbations x 2,000 genes x 200 cells each (+ 2,000 controls), predictions
from the additive baseline. cell-eval is warmed up first (numba compilation excluded) and run
with the same number of threads. Prints a table, then one line of key=value figures.

    python benchmarks/bench_eval_speed.py [--perts 100] [--genes 2000] [--cells 200]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
import warnings

import anndata as ad

from perturbcast.data import read_experiment
from perturbcast.datasets import simulate
from perturbcast.eval import evaluate
from perturbcast.models import get_model


def make_case(n_perts: int, n_genes: int, n_cells: int, seed: int = 0):
    a = simulate(n_genes=n_genes, n_singles=n_perts, n_combos=0, n_contexts=1,
                 cells_per_condition=n_cells, control_cells=2000, seed=seed)
    exp = read_experiment(a, "perturbation", "control")
    model = get_model("perturbation_mean").fit(exp)
    pred = model.predict(exp, exp.conditions(), include_controls=True)
    pred = ad.AnnData(X=pred.X, obs=pred.obs[["perturbation"]], var=pred.var)
    real = ad.AnnData(X=exp.adata.X.toarray(), obs=exp.adata.obs[["perturbation"]],
                      var=exp.adata.var)
    return pred, real


def run_cell_eval(pred, real, threads: int, skip: list[str] | None = None) -> float:
    from cell_eval import MetricsEvaluator

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ev = MetricsEvaluator(adata_pred=pred.copy(), adata_real=real.copy(),
                              control_pert="control", pert_col="perturbation", outdir=tmp,
                              num_threads=threads)
        ev.compute(profile="full", write_csv=False, skip_metrics=skip)
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--perts", type=int, default=100)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--cells", type=int, default=200)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    threads = len(os.sched_getaffinity(0))
    pred, real = make_case(args.perts, args.genes, args.cells)
    t0 = time.perf_counter()
    evaluate(pred, real, "perturbation", "control")
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluate(pred, real, "perturbation", "control", edistance=False)
    ours_ne = time.perf_counter() - t0
    try:
        small_p, small_r = make_case(3, 50, 20, seed=1)
        run_cell_eval(small_p, small_r, threads)  # warm-up: numba compilation
        theirs = run_cell_eval(pred, real, threads)
        theirs_ne = run_cell_eval(pred, real, threads, skip=["pearson_edistance"])
    except ImportError:
        theirs = theirs_ne = float("nan")
    print(f"{'metrics':<28}{'perturbcast s':>15}{'cell-eval s':>13}{'ratio':>8}")
    print(f"{'full profile':<28}{ours:>15.2f}{theirs:>13.2f}{theirs / ours:>8.1f}")
    print(f"{'all but pearson_edistance':<28}{ours_ne:>15.2f}{theirs_ne:>13.2f}"
          f"{theirs_ne / ours_ne:>8.1f}")
    print(f"n_perts={args.perts} n_genes={args.genes} cells_per_pert={args.cells} "
          f"threads={threads} perturbcast_s={ours:.2f} celleval_s={theirs:.2f} "
          f"speedup={theirs / ours:.1f} perturbcast_noedist_s={ours_ne:.2f} "
          f"celleval_noedist_s={theirs_ne:.2f} speedup_noedist={theirs_ne / ours_ne:.1f}")


if __name__ == "__main__":
    main()
