"""Would the baselines' disagreement flag the uncertain predictions where the ensemble cannot?

Where ``shrink=auto`` drops the network's correction, every ensemble member predicts its base's
mean change, so the members' spread is ~0 and ranks nothing (README, "How good is it?";
benchmarks/RESULTS.md, calibration). A candidate signal that exists there too: how much the
simple models disagree on a condition's mean change (root mean over genes of the variance
across cell_mean, context_mean, perturbation_mean, additive, linear and knn). This measures
whether it ranks each test condition's error (mae of the mean change) of blend, knn, linear,
cell_mean and additive: Spearman over the task's test conditions pooled over folds, and with
both centred per fold (``within``). The baselines are fitted on each fold's training cells
only; the test cells only score.

    python benchmarks/bench_base_disagreement.py [--tasks papalexi21_unseen,...]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from scipy.stats import spearmanr

from perturbcast.datasets.tasks import TASKS, load_task
from perturbcast.models import get_model
from perturbcast.models.set_residual import real_deltas

MEMBERS = ("cell_mean", "context_mean", "perturbation_mean", "additive", "linear", "knn")
SCORED = ("blend", "knn", "linear", "cell_mean", "additive")


def task_rows(name: str) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Per test condition: its fold, the members' disagreement and each scored model's mae."""
    exp, split = load_task(name)
    folds, spread, err = [], [], {n: [] for n in SCORED}
    for fold in split.folds:
        train = fold.train_mask(exp)
        models = {n: get_model(n, seed=0).fit(exp, train) for n in {*MEMBERS, *SCORED}}
        test = [(str(p), str(c)) for p, c in fold.test]
        real = real_deltas(exp, fold.test_mask(exp) | exp.is_control, test)
        for i, (p, c) in enumerate(test):
            deltas = {n: models[n].delta(p, c) for n in models}
            members = np.stack([deltas[n] for n in MEMBERS])
            folds.append(fold.name)
            spread.append(float(np.sqrt(members.var(0).mean())))
            for n in SCORED:
                err[n].append(float(np.abs(deltas[n] - real[i]).mean()))
    return np.array(folds), np.array(spread), {n: np.array(v) for n, v in err.items()}


def centred(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = values.astype(float).copy()
    for g in np.unique(groups):
        out[groups == g] -= out[groups == g].mean()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    figures = []
    for name in args.tasks.split(","):
        t0 = time.time()
        folds, spread, err = task_rows(name)
        line = [f"{name}: {len(spread)} test conditions, {len(set(folds))} fold(s)"]
        for n in SCORED:
            rho = spearmanr(spread, err[n]).statistic
            within = (spearmanr(centred(spread, folds), centred(err[n], folds)).statistic
                      if len(set(folds)) > 1 else float("nan"))
            line.append(f"  {n:<10} rho {rho:+.3f}  within folds {within:+.3f}")
            figures.append(f"{name}_rho_{n}={rho:.3f}")
        print("\n".join(line) + f"\n  ({time.time() - t0:.0f} s)", flush=True)
    print(" ".join(figures))


if __name__ == "__main__":
    main()
