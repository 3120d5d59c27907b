"""Does held-out validation with early stopping help the in-context model? Steps, time, quality.

On the simulator (several contexts and batches), for each seed, half of the perturbations of
one context are held out (``unseen-context`` split, their cells in the other contexts stay in
training as prompts); the incontext model is fitted without validation (fixed steps: the
default) and with ``val_fraction`` held-out cells and early stopping, at the default budget and
at twice it, then predicts the held-out (perturbation, context) conditions from the default
prompt. Quality: pearson_delta and mae of the predicted vs real pseudobulk means (cell-eval's
definitions, :mod:`perturbcast.eval.metrics`), mean over conditions and seeds. Also: optimiser
steps taken (both phases) and fit seconds. Ends with one key=value line.

    OMP_NUM_THREADS=1 python benchmarks/bench_incontext_validation.py [--seeds 0 1 2]
        [--params '{"n_modules": 16}']
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np

from perturbcast.data import make_split, read_experiment
from perturbcast.datasets import simulate
from perturbcast.eval.metrics import PairArrays, mae, pearson_delta
from perturbcast.models import get_model
from perturbcast.models.incontext import DEFAULTS

VARIANTS = {
    "fixed": {},
    "val": {"val_fraction": 0.1},
    "val_2x_budget": {"val_fraction": 0.1, "pretrain_steps": 2 * DEFAULTS["pretrain_steps"],
                      "finetune_steps": 2 * DEFAULTS["finetune_steps"]},
}


def quality(model, exp, test: list[tuple[str, str]]) -> tuple[float, float]:
    """Mean pearson_delta and mae over the test conditions."""
    pd_, ma = [], []
    for pert, ctx in test:
        ctrl = exp.rows(np.flatnonzero(exp.is_control & (exp.contexts == ctx))).mean(0)
        real = exp.rows(exp.index_of(pert, ctx)).mean(0)
        pred = np.asarray(model.predict(exp, [(pert, ctx)], n_cells=100).X).mean(0)
        d = PairArrays(np.array([pert]), exp.genes, real[None], pred[None], ctrl, ctrl)
        pd_.append(pearson_delta(d)[pert])
        ma.append(mae(d)[pert])
    return float(np.mean(pd_)), float(np.mean(ma))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--params", default="{}", help="JSON incontext parameters for all variants")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    extra = json.loads(args.params)
    rows: dict[str, list[tuple[float, ...]]] = {v: [] for v in args.variants}
    for seed in args.seeds:
        adata = simulate(n_genes=100, n_singles=8, n_combos=0, n_contexts=3, n_batches=2,
                         cells_per_condition=50, control_cells=100, seed=seed)
        exp = read_experiment(adata, "perturbation", "control", context_key="context",
                              batch_key="batch")
        fold = make_split(exp, "unseen-context", seed=seed, context="ctx0").folds[0]
        train = ~np.isin([f"{p}|{c}" for p, c in zip(exp.perturbations, exp.contexts,
                                                        strict=True)],
                         [f"{p}|{c}" for p, c in fold.test])
        for name in args.variants:
            t0 = time.perf_counter()
            model = get_model("incontext", seed=seed, **{**extra, **VARIANTS[name]})
            model.fit(exp, train)
            fit_s = time.perf_counter() - t0
            s = model.training_summary
            steps = sum(s[ph]["steps"] for ph in ("pretrain", "finetune") if ph in s)
            r, m = quality(model, exp, fold.test)
            rows[name].append((r, m, steps, fit_s))
            print(f"seed={seed} {name:14s} pearson_delta={r:.4f} mae={m:.4f} steps={steps} "
                  f"fit_s={fit_s:.1f}", flush=True)
    figures: dict[str, object] = {"seeds": len(args.seeds)}
    for name, vals in rows.items():
        a = np.asarray(vals)
        for j, key in enumerate(("pearson_delta", "mae", "steps", "fit_s")):
            figures[f"{name}_{key}"] = round(float(a[:, j].mean()), 4 if j < 2 else 1)
        figures[f"{name}_pearson_delta_sd"] = round(float(a[:, 0].std()), 4)
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
