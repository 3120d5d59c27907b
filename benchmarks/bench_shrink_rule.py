"""``shrink=auto`` (lowest held-out error) against ``shrink=auto_1se`` (the smallest share
within one standard error of it) on simulated screens, never on the real tasks' test folds.

For each simulated screen (``--data-seeds``) and split kind (``--splits``), runs
:func:`perturbcast.benchmark.run_benchmark` with the baselines and ``transition`` (``base=auto``,
a short training) once per rule, with the same seed, so the two differ only in the share of the
correction kept. Prints per rule the VCC score, pearson_delta and mae (mean ± sd over screens
and splits) with the shares chosen, the best baseline's figures, and the per-screen difference
(1se minus auto); then one line of key=value figures.

    python benchmarks/bench_shrink_rule.py [--data-seeds 3,4,5] [--splits combo,unseen-perturbation]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd

from perturbcast.benchmark import run_benchmark
from perturbcast.data import make_split, read_experiment
from perturbcast.datasets import simulate

BASELINES = ["cell_mean", "context_mean", "additive", "linear", "knn"]
SHORT = dict(max_steps=300, dim=32, depth=2, n_heads=4, set_size=32, n_sets=8, n_latent=16,
             lr=2e-3, patience=3, base="auto")
METRICS = ("score", "pearson_delta", "mae")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-seeds", default="3,4,5")
    ap.add_argument("--splits", default="combo,unseen-perturbation")
    ap.add_argument("--folds", type=int, default=2)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    rows, t0 = [], time.perf_counter()
    for data_seed in map(int, args.data_seeds.split(",")):
        adata = simulate(n_genes=120, n_singles=14, n_combos=12, n_contexts=2, n_batches=1,
                         cells_per_condition=40, control_cells=200, seed=data_seed)
        exp = read_experiment(adata, "perturbation", "control", context_key="context")
        for kind in args.splits.split(","):
            split = make_split(exp, kind, n_folds=3, seed=data_seed)
            split.folds = split.folds[:args.folds]
            for rule in ("auto", "auto_1se"):
                res = run_benchmark(exp, split, [*BASELINES, "transition"], seed=0,
                                    model_params={"transition": {**SHORT, "shrink": rule}},
                                    show_progress=False, edistance=False)
                s = res.summary.set_index("model")
                best = res.best_baseline()
                rows.append({"data_seed": data_seed, "split": kind, "rule": rule,
                             **{m: float(s.loc["transition", m]) for m in METRICS},
                             **{f"best_{m}": float(s[m][BASELINES].min() if m == "mae"
                                                   else s[m][BASELINES].max())
                                for m in METRICS},
                             "best": best,
                             "shares": ",".join(f"{v:g}" for v in
                                                res.fits.query("model == 'transition'").shrink)})
                print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    print(df.to_string())
    fig = {}
    for rule, g in df.groupby("rule"):
        for m in METRICS:
            fig[f"{rule}_{m}"] = f"{g[m].mean():.4f}±{g[m].std(ddof=1):.4f}"
    wide = df.pivot_table(index=["data_seed", "split"], columns="rule", values=list(METRICS))
    for m in METRICS:
        d = wide[m]["auto_1se"] - wide[m]["auto"]
        fig[f"diff_{m}"] = f"{d.mean():+.4f}±{d.std(ddof=1):.4f}"
        fig[f"diff_{m}_n_better"] = int(np.sum(d < 0 if m == "mae" else d > 0))
    fig["n_cases"] = len(wide)
    fig["wall_s"] = f"{time.perf_counter() - t0:.1f}"
    print(" ".join(f"{k}={v}" for k, v in fig.items()))


if __name__ == "__main__":
    main()
