"""The four real tasks: every baseline (and any other models) with quality tables and times.

Needs the files of ../shared/data (or PERTURBCAST_DATA). Prints one table per task, then one
line of key=value figures: seconds per task, each task's best baseline and its score, and for
every non-baseline model its score, pearson_delta and score minus the best baseline's.

    python benchmarks/bench_tasks.py [--models a,b,...] [--params '{"max_steps": 800}']
        [--embeddings SPEC]   # gene vectors for the set models: "default" (the built-in
                              # human gene table, also linear's and knn's default), "train" or
                              # a name -> vector table
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

from perturbcast.benchmark import run_benchmark
from perturbcast.datasets.tasks import TASKS, load_task
from perturbcast.eval.report import print_summary
from perturbcast.models import BASELINES


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(BASELINES))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--params", default="{}", help="JSON parameters for non-baseline models")
    ap.add_argument("--embeddings", default="default")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    models = args.models.split(",")
    extra = {"embeddings": args.embeddings, **json.loads(args.params)}
    model_params = {m: extra for m in models if m not in BASELINES}
    figures = {}
    t_all = time.perf_counter()
    for name in args.tasks.split(","):
        t0 = time.perf_counter()
        exp, split = load_task(name)
        res = run_benchmark(exp, split, models, model_params=model_params, show_progress=False)
        secs = time.perf_counter() - t0
        best = res.best_baseline()
        print_summary(res.summary, f"{name}: {exp.describe()} ({secs:.1f}s)", best)
        s = res.summary.set_index("model")
        print(s.round(4).to_csv())
        figures[f"{name}_s"] = f"{secs:.1f}"
        figures[f"{name}_best"] = best
        figures[f"{name}_best_score"] = f"{s.score[best]:.4f}"
        for m in models:
            if m not in BASELINES:
                figures[f"{name}_{m}_score"] = f"{s.score[m]:.4f}"
                figures[f"{name}_{m}_pearson_delta"] = f"{s.pearson_delta[m]:.4f}"
                figures[f"{name}_{m}_vs_best"] = f"{s.score[m] - s.score[best]:+.4f}"
                figures[f"{name}_{m}_fit_s"] = f"{res.timings[m]:.1f}"
    figures["total_s"] = f"{time.perf_counter() - t_all:.1f}"
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
