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


def run_cell_eval(pred, real, threads: int) -> float:
    from cell_eval import MetricsEvaluator

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ev = MetricsEvaluator(adata_pred=pred.copy(), adata_real=real.copy(),
                              control_pert="control", pert_col="perturbation", outdir=tmp,
                              num_threads=threads)
        ev.compute(profile="full", write_csv=False)
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
    try:
        small_p, small_r = make_case(3, 50, 20, seed=1)
        run_cell_eval(small_p, small_r, threads)  # warm-up: numba compilation
        theirs = run_cell_eval(pred, real, threads)
    except ImportError:
        theirs = float("nan")
    ratio = theirs / ours
    print(f"{'tool':<12}{'seconds':>10}")
    print(f"{'perturbcast':<12}{ours:>10.2f}")
    print(f"{'cell-eval':<12}{theirs:>10.2f}")
    print(f"n_perts={args.perts} n_genes={args.genes} cells_per_pert={args.cells} "
          f"threads={threads} perturbcast_s={ours:.2f} celleval_s={theirs:.2f} "
          f"speedup={ratio:.1f}")


if __name__ == "__main__":
    main()
