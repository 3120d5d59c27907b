"""Does held-out validation with early stopping help the in-context model? Steps, time, quality.

On the simulator (several contexts and batches), for each seed, half of the perturbations of
one context are held out (``unseen-context`` split, their cells in the other contexts stay in
training as prompts). The incontext model is fitted without validation (fixed steps) and with
10% of the training cells held out for validation and early stopping (``--variants``: at the
default budget, and at twice or four times it, with or without validation), then predicts the
held-out (perturbation, context) conditions from the default prompt. Quality: pearson_delta
and mae of the predicted vs real pseudobulk means (cell-eval's definitions,
:mod:`perturbcast.eval.metrics`), mean over conditions and seeds. Also: optimiser steps taken
(both phases), fit seconds and which phases stopped early. Ends with one key=value line.

    OMP_NUM_THREADS=1 python benchmarks/bench_incontext_validation.py [--seeds 0 1 2]
        [--variants fixed val val_2x] [--params '{"n_modules": 16}']
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


def _budget(factor: int) -> dict[str, int]:
    return {"pretrain_steps": factor * DEFAULTS["pretrain_steps"],
            "finetune_steps": factor * DEFAULTS["finetune_steps"]}


VAL = {"val_fraction": 0.1}
NO_VAL = {"val_fraction": 0.0}
VARIANTS = {"fixed": NO_VAL, "val": VAL, "val_2x": {**VAL, **_budget(2)},
            "fixed_2x": {**NO_VAL, **_budget(2)}, "val_4x": {**VAL, **_budget(4)},
            "fixed_4x": {**NO_VAL, **_budget(4)}}


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
    ap.add_argument("--variants", nargs="+", default=["fixed", "val", "val_2x"],
                    choices=list(VARIANTS))
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
            stopped = [ph for ph in ("pretrain", "finetune") if s.get(ph, {}).get("stopped_early")]
            r, m = quality(model, exp, fold.test)
            rows[name].append((r, m, steps, fit_s))
            print(f"seed={seed} {name:9s} pearson_delta={r:.4f} mae={m:.4f} steps={steps} "
                  f"fit_s={fit_s:.1f} stopped_early={','.join(stopped) or '-'}", flush=True)
    figures: dict[str, object] = {"seeds": len(args.seeds)}
    for name, vals in rows.items():
        a = np.asarray(vals)
        for j, key in enumerate(("pearson_delta", "mae", "steps", "fit_s")):
            figures[f"{name}_{key}"] = round(float(a[:, j].mean()), 4 if j < 2 else 1)
        figures[f"{name}_pearson_delta_sd"] = round(float(a[:, 0].std()), 4)
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
