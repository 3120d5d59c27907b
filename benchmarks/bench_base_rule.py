"""How ``base=auto`` should choose: the lowest inner error (today) or "parity, then score".

The fall-back of the learned models is their base when the correction is dropped, so the base
choice decides where they land. ``error`` (the rule today) takes the candidate whose
out-of-fold mean changes have the smallest squared error on the inner folds. ``parity_score``
keeps the candidates within one standard error of the best on that error *and* on
pearson_delta (paired over the held-out training conditions) and takes, among them, the one
with the best inner VCC-like score (mae, discrimination and top-gene overlap of the out-of-fold
mean changes against cell_mean's), the goal of issue 12 written as a rule.

Baselines only: for each case (a simulated screen and split kind, or a real task), every base
candidate is fitted and scored on every test fold once (``run_benchmark``); each rule chooses
on the fold's training cells only, per seed (the inner-fold assignments); a rule's figures are
the test-fold figures of what it chose. Printed: each rule's choices and metrics per case, the
rule minus ``error`` (mean ± sd over cases) and one line of key=value figures.

    python benchmarks/bench_base_rule.py [--data-seeds 3,4,5] [--splits ...] [--tasks ...]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
from simulated_cases import simulated_cases

from perturbcast.benchmark import run_benchmark
from perturbcast.models.base_rule import rule_choice
from perturbcast.models.set_residual import base_names, inner_assignments, inner_base_table

METRICS = ("score", "pearson_delta", "mae", "discrimination_score_l1", "overlap_at_N")
RULES = ("error", "parity_score")


def fold_metrics(res) -> pd.DataFrame:
    """(model, fold) -> metric: per fold, the mean over contexts, scored against cell_mean."""
    from perturbcast.eval.evaluate import vcc_score

    pp = res.per_perturbation
    units = pp.groupby(["model", "fold", "context"])[list(METRICS[1:])].mean().reset_index()
    ref = units[units.model == "cell_mean"].set_index(["fold", "context"])
    units["score"] = [vcc_score(r, ref.loc[(r["fold"], r["context"])].to_dict())[0]
                      for r in units.to_dict("records")]
    return units.groupby(["model", "fold"])[list(METRICS)].mean()


def run_case(exp, split, seeds: list[int], label: str) -> list[dict]:
    names = ["control", *base_names()]
    res = run_benchmark(exp, split, names, seed=0, show_progress=False, edistance=False)
    table = fold_metrics(res)
    rows = []
    for s in seeds:
        for fold in split.folds:
            mask = fold.train_mask(exp)
            keys = sorted({(str(p), str(c)) for p, c, m in zip(
                exp.perturbations, exp.contexts, mask, strict=True)
                if m and p != exp.control})
            _, assignments = inner_assignments(keys, "auto", 5, s, exp.components)
            inner = inner_base_table(exp, mask, keys, base_names(), assignments, s)
            for rule in RULES:
                chosen = rule_choice(inner.table, rule)
                got = table.loc[("control" if chosen == "none" else chosen, fold.name)]
                rows.append({"case": label, "seed": s, "fold": fold.name, "rule": rule,
                             "base": chosen, **got.to_dict()})
    best = {m: (table.groupby("model")[m].mean().min() if m == "mae" else
                table.groupby("model")[m].mean().max()) for m in METRICS}
    for r in rows:
        r.update({f"best_{m}": v for m, v in best.items()})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-seeds", default="3,4,5")
    ap.add_argument("--splits", default="combo,unseen-perturbation,unseen-context")
    ap.add_argument("--tasks", default="")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--folds", type=int, default=3)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, t0 = [], time.perf_counter()
    if args.tasks:
        from perturbcast.datasets.tasks import load_task

        for task in args.tasks.split(","):
            exp, split = load_task(task, None)
            rows += run_case(exp, split, seeds, task)
    else:
        for data_seed, kind, exp, split in simulated_cases(args.data_seeds, args.splits,
                                                           args.folds):
            rows += run_case(exp, split, seeds, f"sim{data_seed}-{kind}")
    df = pd.DataFrame(rows)
    per = df.groupby(["case", "rule", "seed"])[list(METRICS)].mean()
    per = per.groupby(["case", "rule"]).agg(["mean", "std"])
    choices = df.groupby(["case", "rule"]).base.agg(
        lambda b: {k: int(v) for k, v in b.value_counts().items()})
    pd.set_option("display.width", 250)
    for case in df.case.unique():
        print(f"\n{case} (best baseline per metric: " + ", ".join(
            f"{m} {df[df.case == case][f'best_{m}'].iloc[0]:.4f}" for m in METRICS) + ")")
        for rule in RULES:
            r = per.loc[(case, rule)]
            print(f"  {rule:13s} " + "  ".join(
                f"{m} {r[(m, 'mean')]:.4f}±{r[(m, 'std')]:.4f}" for m in METRICS)
                + f"  chose {choices.loc[(case, rule)]}")
    means = df.groupby(["case", "rule"])[list(METRICS)].mean()
    diff = means.xs("parity_score", level="rule") - means.xs("error", level="rule")
    fig = {"n_cases": len(diff)}
    for m in METRICS:
        d = diff[m]
        fig[f"parity_minus_error_{m}"] = f"{d.mean():+.4f}±{d.std(ddof=1):.4f}"
        fig[f"{m}_n_better"] = int(np.sum(d < -1e-9 if m == "mae" else d > 1e-9))
        fig[f"{m}_n_worse"] = int(np.sum(d > 1e-9 if m == "mae" else d < -1e-9))
    fig["wall_s"] = f"{time.perf_counter() - t0:.1f}"
    print(" ".join(f"{k}={v}" for k, v in fig.items()))


if __name__ == "__main__":
    main()
