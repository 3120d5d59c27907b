"""Set models vs the best baseline on a small simulated combo screen: accuracy, fit time and
whether the ensemble spread ranks the per-perturbation error.

Runs :func:`perturbcast.benchmark.run_benchmark` on ``simulate()`` (2 contexts, combo split)
with the baselines and the set models, each set model with the given parameters, and prints
the summary table, then one line of key=value figures: per set model the VCC score,
pearson_delta, mae and fit seconds (summed over folds), the best baseline's score and
pearson_delta, and, when a model writes a ``spread`` column (``n_seeds`` > 1), the Spearman
correlation over perturbations between spread and mae.

    python benchmarks/bench_learned.py [--folds 2] [--param flow.base=auto] [--tag after]
"""

from __future__ import annotations

import argparse
import json
import time

import pandas as pd

from perturbcast.benchmark import run_benchmark
from perturbcast.data import make_split, read_experiment
from perturbcast.datasets import simulate

BASELINES = ["cell_mean", "context_mean", "perturbation_mean", "additive", "linear"]


def _parse(params: list[str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for item in params:
        key, value = item.split("=", 1)
        model, name = key.split(".", 1)
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        out.setdefault(model, {})[name] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--models", default="flow,transition")
    ap.add_argument("--param", action="append", default=[], help="model.key=value")
    ap.add_argument("--tag", default="run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    adata = simulate(n_genes=150, n_singles=12, n_combos=12, n_contexts=2, n_batches=1,
                     cells_per_condition=40, control_cells=200, seed=3)
    exp = read_experiment(adata, "perturbation", "control", context_key="context")
    split = make_split(exp, "combo", n_folds=3, seed=0)
    split.folds = split.folds[:args.folds]
    models = args.models.split(",")
    t0 = time.perf_counter()
    res = run_benchmark(exp, split, [*BASELINES, *models], seed=args.seed,
                        model_params=_parse(args.param), show_progress=False)
    s = res.summary.set_index("model")
    print(s[["score", "pearson_delta", "mae", "discrimination_score_l1"]].round(4).to_string())
    print(res.fits[~res.fits.model.isin(BASELINES)].round(2).to_string())
    best = res.best_baseline()
    fig = {"tag": args.tag, "best_baseline": best,
           "best_score": round(float(s.loc[best, "score"]), 4),
           "best_pearson_delta": round(float(s.pearson_delta[BASELINES].max()), 4),
           "best_mae": round(float(s.mae[BASELINES].min()), 4)}
    for m in models:
        fig[f"{m}_score"] = round(float(s.loc[m, "score"]), 4)
        fig[f"{m}_pearson_delta"] = round(float(s.loc[m, "pearson_delta"]), 4)
        fig[f"{m}_mae"] = round(float(s.loc[m, "mae"]), 4)
        fig[f"{m}_fit_s"] = round(res.timings[m], 1)
    for cal in res.calibration():
        print(cal.line())
        fig[f"{cal.model}_spread_mae_spearman"] = round(cal.spearman, 3)
    fig["wall_s"] = round(time.perf_counter() - t0, 1)
    pd.set_option("display.width", 200)
    print(" ".join(f"{k}={v}" for k, v in fig.items()))


if __name__ == "__main__":
    main()
