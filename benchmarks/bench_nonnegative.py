"""How predicted cells are made non-negative, and whether the drawn controls' mean is matched
to the context's, chosen without the test folds.

On each real task's first-fold TRAINING cells only, a third of the training conditions is
held out (3 inner folds; by perturbation on papalexi21/norman19 (combinations only there), by
condition on mcfaline23/kang18) and the shift baselines are scored under three rules:
``plain_clip`` (clip at 0), ``keep_mean`` (:func:`perturbcast.models.base.clip_keep_mean`:
clipped values scaled to keep each gene's mean) and ``keep_mean_matched`` (the default: also
the drawn controls shifted to the context's control mean,
:data:`perturbcast.models.base.MATCH_CONTROL_MEAN`). Needs ../shared/data.

    python benchmarks/bench_nonnegative.py [--tasks t1,t2]
"""
import sys
import warnings

import numpy as np
import pandas as pd

import perturbcast.models.base as B
from perturbcast.benchmark import run_benchmark
from perturbcast.data.splits import Fold, Split
from perturbcast.datasets.tasks import load_task

warnings.filterwarnings("ignore")
models = ["context_mean", "perturbation_mean", "additive", "linear", "knn"]
orig = B.clip_keep_mean
rows = []
tasks = sys.argv[sys.argv.index("--tasks") + 1] if "--tasks" in sys.argv else ",".join(
    ["mcfaline23_crossline", "papalexi21_unseen", "norman19_combo", "kang18_celltype"])
for task in tasks.split(","):
    exp, split = load_task(task)
    inner = exp.subset(split.folds[0].train_mask(exp))
    conds = sorted({(p, c) for p, c in zip(inner.perturbations, inner.contexts, strict=True)
                    if p != inner.control})
    by_pert = task in ("papalexi21_unseen", "norman19_combo")
    units = sorted({p for p, _ in conds}) if by_pert else conds
    order = np.random.default_rng(0).permutation(len(units))
    folds = []
    for k in range(3):
        held = {units[j] for i, j in enumerate(order) if i % 3 == k}
        test = [c for c in conds if (c[0] if by_pert else c) in held]
        if task == "norman19_combo":  # combos only, as the task holds out
            test = [c for c in test if len(inner.components(c[0])) > 1]
        folds.append(Fold(f"inner{k}", [c for c in conds if c not in test], test))
    sp = Split("custom", 0, [f for f in folds if f.test], {})
    rules = [("plain_clip", lambda x: np.clip(x, 0, None), False), ("keep_mean", orig, False),
             ("keep_mean_matched", orig, True)]
    for label, fn, matched in rules:
        B.clip_keep_mean, B.MATCH_CONTROL_MEAN = fn, matched
        res = run_benchmark(inner, sp, ["cell_mean", *models], show_progress=False,
                            edistance=False, skip_unable=True)
        s = res.summary.set_index("model")
        for m in models:
            if m in s.index:
                rows.append({"task": task, "model": m, "rule": label,
                             "pearson_delta": s.pearson_delta[m], "mae": s.mae[m],
                             "score": s.score[m]})
    B.clip_keep_mean, B.MATCH_CONTROL_MEAN = orig, True
t = pd.DataFrame(rows).pivot_table(index=["task", "model"], columns="rule",
                                   values=["pearson_delta", "mae"])
print(t.round(4).to_string())
d = pd.DataFrame(rows).pivot_table(index=["task", "model"], columns="rule",
                                   values=["pearson_delta", "mae"])
figures = {"rows": len(d)}
for new, old in (("keep_mean", "plain_clip"), ("keep_mean_matched", "keep_mean")):
    pd_gain = d["pearson_delta"][new] - d["pearson_delta"][old]
    mae_change = d["mae"][new] - d["mae"][old]
    figures[f"{new}_vs_{old}_better_pearson_delta"] = int((pd_gain > 0).sum())
    figures[f"{new}_vs_{old}_better_mae"] = int((mae_change < 0).sum())
    figures[f"{new}_vs_{old}_mean_pearson_delta_gain"] = f"{pd_gain.mean():.4f}"
    figures[f"{new}_vs_{old}_mean_mae_change"] = f"{mae_change.mean():+.5f}"
print(" ".join(f"{k}={v}" for k, v in figures.items()))
