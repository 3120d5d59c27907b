"""Two ways of choosing ``shrink`` compared on simulated screens, never on the real tasks' test
folds: by default ``shrink=auto`` (lowest held-out error) against ``auto_1se`` (the smallest
share within one standard error of it); ``--rules auto,auto@all`` compares the default probes
(until 8 held-out conditions or 3 probes) with one probe per inner fold (``shrink_probes=all``).

For each simulated screen (``--data-seeds``) and split kind (``--splits``), runs
:func:`perturbcast.benchmark.run_benchmark` with the baselines and ``transition`` (``base=auto``,
a short training) once per rule, with the same seed, so the two differ only in the share of the
correction kept. Prints per rule the VCC score, pearson_delta and mae (mean ± sd over screens
and splits) with the shares chosen, the best baseline's figures, and the per-screen difference
(second rule minus first); then one line of key=value figures. ``--screen small`` simulates a
papalexi21-like screen (25 single perturbations, one context; its default split is
unseen-perturbation; use ``--n-folds 5``).

    python benchmarks/bench_shrink_rule.py [--data-seeds 3,4,5] [--splits combo,unseen-perturbation]
    python benchmarks/bench_shrink_rule.py --rules auto,auto@all --screen small --n-folds 5
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
SCREENS = {"default": dict(n_singles=14, n_combos=12, n_contexts=2),
           "small": dict(n_singles=25, n_combos=0, n_contexts=1)}


def rule_params(rule: str) -> dict:
    """``auto``, ``auto_1se`` or either with ``@PROBES`` (``shrink_probes``)."""
    shrink, _, probes = rule.partition("@")
    return {"shrink": shrink, **({"shrink_probes": probes} if probes else {})}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-seeds", default="3,4,5")
    ap.add_argument("--splits", default=None,
                    help="default: combo,unseen-perturbation (--screen small: unseen-perturbation)")
    ap.add_argument("--folds", type=int, default=2, help="folds run (of --n-folds)")
    ap.add_argument("--n-folds", type=int, default=3)
    ap.add_argument("--rules", default="auto,auto_1se")
    ap.add_argument("--screen", choices=sorted(SCREENS), default="default")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    rows, t0, rules = [], time.perf_counter(), args.rules.split(",")
    splits = args.splits or ("unseen-perturbation" if args.screen == "small"
                             else "combo,unseen-perturbation")
    assert len(rules) == 2, "--rules takes two rules: FIRST,SECOND"
    for data_seed in map(int, args.data_seeds.split(",")):
        adata = simulate(n_genes=120, **SCREENS[args.screen], n_batches=1,
                         cells_per_condition=40, control_cells=200, seed=data_seed)
        exp = read_experiment(adata, "perturbation", "control", context_key="context")
        for kind in splits.split(","):
            split = make_split(exp, kind, n_folds=args.n_folds, seed=data_seed)
            split.folds = split.folds[:args.folds]
            for rule in rules:
                t1 = time.perf_counter()
                res = run_benchmark(exp, split, [*BASELINES, "transition"], seed=0,
                                    model_params={"transition": {**SHORT, **rule_params(rule)}},
                                    show_progress=False, edistance=False)
                s = res.summary.set_index("model")
                fits = res.fits.query("model == 'transition'")
                best = res.best_baseline()
                rows.append({"data_seed": data_seed, "split": kind, "rule": rule,
                             **{m: float(s.loc["transition", m]) for m in METRICS},
                             **{f"best_{m}": float(s[m][BASELINES].min() if m == "mae"
                                                   else s[m][BASELINES].max())
                                for m in METRICS},
                             "best": best,
                             "shares": ",".join(f"{v:g}" for v in fits.shrink),
                             "probes": ",".join(f"{v:g}" for v in fits.shrink_n_probes),
                             "fit_s": round(float(fits.fit_s.sum()), 1),
                             "wall_s": round(time.perf_counter() - t1, 1)})
                print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    print(df.to_string())
    fig = {}
    for rule, g in df.groupby("rule"):
        for m in METRICS:
            fig[f"{rule}_{m}"] = f"{g[m].mean():.4f}±{g[m].std(ddof=1):.4f}"
        fig[f"{rule}_wall_s"] = f"{g.wall_s.sum():.0f}"
        fig[f"{rule}_transition_fit_s"] = f"{g.fit_s.sum():.0f}"
    wide = df.pivot_table(index=["data_seed", "split"], columns="rule", values=list(METRICS))
    for m in METRICS:
        d = wide[m][rules[1]] - wide[m][rules[0]]
        fig[f"diff_{m}"] = f"{d.mean():+.4f}±{d.std(ddof=1):.4f}"
        fig[f"diff_{m}_n_better"] = int(np.sum(d < 0 if m == "mae" else d > 0))
    fig["n_cases"] = len(wide)
    fig["wall_s"] = f"{time.perf_counter() - t0:.1f}"
    print(" ".join(f"{k}={v}" for k, v in fig.items()))


if __name__ == "__main__":
    main()
