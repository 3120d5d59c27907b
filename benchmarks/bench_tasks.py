"""The four real tasks: every model as mean ± sd over seeds, the verdict, and the times.

Needs the files of ../shared/data (or PERTURBCAST_DATA). Prints, per task, a table of every
model (VCC score, pearson_delta, discrimination_score_l1, overlap_at_N, mae as mean ± sd over
the seeds; baselines are deterministic and run once) and the verdict of
:meth:`~perturbcast.benchmark.BenchmarkResult.verdict`; then one line of key=value figures:
seconds per task, each task's best baseline and its score, and for every learned model its
score, its sd, its difference from its best baseline and whether that exceeds the seed spread;
for ensembles (``--param n_seeds=3``), the Spearman correlation between the members' spread
and the per-perturbation mae.

    python benchmarks/bench_tasks.py [--models a,b,...|baselines|learned|all] [--seeds 0,1,2]
        [--tasks t1,t2] [--param KEY=VALUE ...]  # as the CLI: MODEL.KEY or a bare KEY
        [--params '{"max_steps": 800}']          # JSON, the same routing
        [--prompted-only]     # test only the conditions the in-context model has example
                              # cells for (Norman: combos with a training single)
        [--folds 0,2]         # only these folds (split a long task over processes)
        [--out DIR]           # DIR/<task>/: summary, per_perturbation and fits CSVs, report.md
        [--embeddings SPEC]   # gene vectors for every model that takes them: "default" (the
                              # built-in human gene table, every such model's default),
                              # "train" or a name -> vector table
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

from perturbcast.benchmark import run_benchmark
from perturbcast.datasets.tasks import TASKS, load_task
from perturbcast.eval.report import write_benchmark_report
from perturbcast.models.selection import (
    parse_param_items,
    parse_seeds,
    route_params,
    select_models,
    takes_param,
)

SHOWN = ("score", "pearson_delta", "discrimination_score_l1", "overlap_at_N", "mae")


def mean_sd_table(summary, best: str | None) -> str:
    """Plain text: one line per model (best baseline starred), each shown metric as
    mean ± sd over seeds (sd omitted for one seed), the number of seeds and the gene table."""
    head = [c.replace("discrimination_score", "disc") for c in SHOWN]
    lines = ["model".ljust(18) + "".join(c.rjust(24) for c in head) + "  seeds  table"]
    for r in summary.to_dict("records"):
        cells = []
        for c in SHOWN:
            sd = r[f"{c}_sd"]
            cells.append(f"{r[c]:.4f}" + (f" ± {sd:.4f}" if r["n_seeds"] > 1 else ""))
        table = r["embeddings"] if isinstance(r["embeddings"], str) else "-"
        name = r["model"] + (" *" if r["model"] == best else "")
        lines.append(name.ljust(18) + "".join(x.rjust(24) for x in cells) +
                     f"  {r['n_seeds']:>5}  {Path(table).name}")
    return "\n".join(lines)


def choice_lines(fits) -> list[str]:
    """Per learned model, what its training chose in each fold (base, shrink, steps) and
    for how many of the seeds, e.g. ``transition: line=A172 base=context_mean shrink=0.5
    steps=200 (x3)``."""
    keys = [k for k in ("base", "shrink", "steps") if k in fits]
    if "base" not in keys:
        return []
    out = []
    for (m, fold), rows in fits.dropna(subset=["base"]).groupby(["model", "fold"], sort=False):
        shown = rows[keys].map(lambda v: f"{v:g}" if isinstance(v, float) else str(v))
        for combo, n in shown.value_counts(sort=False).items():
            out.append(f"{m}: {fold} " + " ".join(f"{k}={v}" for k, v in zip(keys, combo,
                                                                           strict=True))
                       + f" (x{n})")
    return out


def prompted_only(exp, split) -> int:
    """Keep, in every fold, the test conditions that have prompt cells among the fold's
    training cells (the in-context model's rule: the perturbation in other contexts, or a
    combination's singles); drop folds left empty. Returns the number of test conditions kept."""
    from perturbcast.models.incontext_sets import prompt_cells

    for fold in split.folds:
        train = fold.train_mask(exp) & ~exp.is_control
        perts, ctxs = exp.perturbations[train], exp.contexts[train]
        fold.test = [(p, c) for p, c in fold.test
                     if prompt_cells(perts, ctxs, p, c, exp.components)[1]]
    split.folds = [f for f in split.folds if f.test]
    return sum(len(f.test) for f in split.folds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="all")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--param", action="append", default=[], help="KEY=VALUE or MODEL.KEY=VALUE")
    ap.add_argument("--params", default="{}", help="JSON, routed like --param")
    ap.add_argument("--embeddings", default=None)
    ap.add_argument("--prompted-only", action="store_true")
    ap.add_argument("--folds", default=None, help="fold numbers to run, e.g. 0,2 (default all)")
    ap.add_argument("--out", default=None, help="write each task's CSVs and report.md here")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    models = select_models(args.models)
    group = any(g in ("all", "learned") for g in args.models.split(","))
    seeds = parse_seeds(args.seeds)
    table = args.embeddings
    params = {**json.loads(args.params), **parse_param_items(args.param)}
    if table is not None and any(takes_param(m, "embeddings") for m in models):
        params = {"embeddings": table, **params}
    model_params = route_params(models, params)
    figures = {"seeds": ",".join(map(str, seeds))}
    t_all = time.perf_counter()
    for name in args.tasks.split(","):
        t0 = time.perf_counter()
        exp, split = load_task(name)
        if args.folds is not None:
            split.folds = [split.folds[int(k)] for k in args.folds.split(",")]
            figures[f"{name}_folds"] = "+".join(f.name for f in split.folds)
        if args.prompted_only:
            n_test = prompted_only(exp, split)
            print(f"{name}: {n_test} test conditions have prompt cells in training")
            figures[f"{name}_prompted_conditions"] = str(n_test)
            if not n_test:
                continue
        res = run_benchmark(exp, split, models, model_params=model_params, seeds=seeds,
                            show_progress=False, skip_unable=group)
        secs = time.perf_counter() - t0
        best = res.best_baseline()
        print(f"\n{name}: {exp.describe()} ({secs:.1f}s); * best baseline")
        print(mean_sd_table(res.summary, best))
        print(f"verdict: {res.verdict()}")
        s = res.summary.set_index("model")
        figures[f"{name}_s"] = f"{secs:.1f}"
        figures[f"{name}_best"] = best
        figures[f"{name}_best_score"] = f"{s.score[best]:.4f}"
        fit_s = res.fits.groupby("model").fit_s.mean()
        for r in res.comparisons().to_dict("records"):
            m = r["model"]
            figures[f"{name}_{m}_score"] = f"{r['score']:.4f}"
            figures[f"{name}_{m}_score_sd"] = f"{r['score_sd']:.4f}"
            figures[f"{name}_{m}_pearson_delta"] = f"{s.pearson_delta[m]:.4f}"
            figures[f"{name}_{m}_vs_{r['baseline']}"] = f"{r['difference']:+.4f}"
            figures[f"{name}_{m}_exceeds_spread"] = str(r["exceeds_spread"]).lower()
            figures[f"{name}_{m}_fit_s_per_fold"] = f"{fit_s[m]:.1f}"
        for line in choice_lines(res.fits):
            print(line)
        for cal in res.calibration():
            print(cal.line())
            figures[f"{name}_{cal.model}_spread_mae_spearman"] = f"{cal.spearman:.3f}"
            figures[f"{name}_{cal.model}_spread_informative"] = f"{cal.informative}/{cal.n}"
        if args.out:  # per fold and perturbation, to merge runs split over --folds/--seeds
            write_benchmark_report(res, Path(args.out) / name, f"bench_tasks: {name}",
                                   [exp.describe(), f"seeds {figures['seeds']}"])
    figures["total_s"] = f"{time.perf_counter() - t_all:.1f}"
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
