"""The ``blend`` baseline (stacked mean changes, weights from inner folds) against the best
single baseline, on simulated screens, never on the real tasks' test folds.

For each simulated screen (``--data-seeds``) and split kind (``--splits``), runs
:func:`perturbcast.benchmark.run_benchmark` with every baseline that predicts a mean change and
``blend``, on every fold. Prints per case the blend's weights per fold and, per metric, the
blend minus the best single baseline *on that metric* (the best is picked after the fact, with
the test folds, so the comparison favours the singles); then mean ± sd over cases, how often
the blend is at least as good, and one line of key=value figures.

    python benchmarks/bench_blend.py [--data-seeds 3,4,5] [--splits combo,unseen-perturbation]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
from simulated_cases import simulated_cases

from perturbcast.benchmark import run_benchmark

SINGLES = ["control", "cell_mean", "context_mean", "perturbation_mean", "additive", "linear",
           "knn"]
METRICS = ("score", "pearson_delta", "mae", "discrimination_score_l1", "overlap_at_N")
LOWER_BETTER = ("mae",)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-seeds", default="3,4,5")
    ap.add_argument("--splits", default="combo,unseen-perturbation,unseen-context")
    ap.add_argument("--folds", type=int, default=3)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    rows, t0 = [], time.perf_counter()
    for data_seed, kind, exp, split in simulated_cases(args.data_seeds, args.splits, args.folds):
        res = run_benchmark(exp, split, [*SINGLES, "blend"], seed=0, show_progress=False,
                            edistance=False)
        s = res.summary.set_index("model")
        row = {"data_seed": data_seed, "split": kind}
        for m in METRICS:
            singles = s.loc[SINGLES, m]
            best = singles.idxmin() if m in LOWER_BETTER else singles.idxmax()
            row[m] = float(s.loc["blend", m])
            row[f"best_{m}"] = float(singles[best])
            row[f"best_{m}_by"] = best
        row["weights"] = " | ".join(res.fits.query("model == 'blend'").blend_weights)
        rows.append(row)
        print(row, flush=True)
    df = pd.DataFrame(rows)
    print(df[["data_seed", "split", *[c for m in METRICS for c in (m, f"best_{m}",
                                                                    f"best_{m}_by")]]]
          .to_string(float_format=lambda v: f"{v:.4f}"))
    fig = {"n_cases": len(df)}
    for m in METRICS:
        d = df[m] - df[f"best_{m}"]
        fig[f"blend_minus_best_{m}"] = f"{d.mean():+.4f}±{d.std(ddof=1):.4f}"
        fig[f"{m}_n_at_least_best"] = int(np.sum(d <= 0 if m in LOWER_BETTER else d >= 0))
    fig["wall_s"] = f"{time.perf_counter() - t0:.1f}"
    print(" ".join(f"{k}={v}" for k, v in fig.items()))


if __name__ == "__main__":
    main()
