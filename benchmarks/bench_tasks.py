"""The four real tasks with every baseline: quality tables and total time.

Needs the files of ../shared/data (or PERTURBCAST_DATA). Prints one table per task, then one
line of key=value figures (seconds per task, total, and each task's best baseline score).

    python benchmarks/bench_tasks.py [--models a,b,...]
"""

from __future__ import annotations

import argparse
import time
import warnings

from perturbcast.benchmark import run_benchmark
from perturbcast.datasets.tasks import TASKS, load_task
from perturbcast.eval.report import print_summary
from perturbcast.models import BASELINES


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(BASELINES))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    figures = {}
    t_all = time.perf_counter()
    for name in TASKS:
        t0 = time.perf_counter()
        exp, split = load_task(name)
        res = run_benchmark(exp, split, args.models.split(","), show_progress=False)
        secs = time.perf_counter() - t0
        best = res.best_baseline()
        print_summary(res.summary, f"{name}: {exp.describe()} ({secs:.1f}s)", best)
        figures[f"{name}_s"] = f"{secs:.1f}"
        figures[f"{name}_best"] = best
        figures[f"{name}_best_score"] = f"{res.summary.set_index('model').score[best]:.4f}"
    figures["total_s"] = f"{time.perf_counter() - t_all:.1f}"
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
