"""Which across-cell attention, and does the prompt-change path help? Quality and time.

On the simulator, two perturbations are held out of training entirely; each variant of the
incontext model is fitted once and predicts them in every context from prompt cells of the
other contexts only. Quality: pearson between predicted and true mean change (per held-out
perturbation and context, averaged), and the same with a broken prompt (control cells
relabelled as the perturbation), which a model that reads its prompt must do worse on.
Ends with one line of key=value figures.

    OMP_NUM_THREADS=1 python benchmarks/bench_incontext_variants.py [--steps 300]
"""

from __future__ import annotations

import argparse
import time
import warnings

import anndata as ad
import numpy as np

from perturbcast.data import read_experiment
from perturbcast.datasets import simulate
from perturbcast.models import get_model

BASE = dict(n_modules=16, dim=16, depth=2, n_heads=4, set_size=32, n_prompt=16, n_sets=4,
            lr=3e-3)
VARIANTS = {"module": {}, "flat": {"cross": "flat"},
            "module_no_change_path": {"change_skip": False, "prompt_summary": False}}


def broken_prompt(exp, pert: str, ctx: str):
    other = exp.subset((exp.contexts != ctx) & exp.is_control).adata
    fake = ad.concat([other, other], index_unique="-")
    fake.obs["perturbation"] = ["control"] * other.n_obs + [pert] * other.n_obs
    return read_experiment(fake, "perturbation", "control", context_key="context",
                           input_scale="log1p")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300, help="fine-tuning steps")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    adata = simulate(n_genes=100, n_singles=8, n_combos=0, n_contexts=3, n_batches=1,
                     cells_per_condition=50, control_cells=100, seed=3)
    exp = read_experiment(adata, "perturbation", "control", context_key="context")
    held = exp.perturbation_names()[:2]
    figures: dict[str, object] = {}
    for name, extra in VARIANTS.items():
        t0 = time.perf_counter()
        model = get_model("incontext", seed=0, pretrain_steps=args.steps // 3,
                          finetune_steps=args.steps, **BASE, **extra)
        model.fit(exp, ~np.isin(exp.perturbations, held))
        fit_s = time.perf_counter() - t0
        rs, nulls = [], []
        for pert in held:
            for ctx in exp.context_names():
                ctrl = exp.rows(np.flatnonzero(exp.is_control & (exp.contexts == ctx))).mean(0)
                true = exp.rows(exp.index_of(pert, ctx)).mean(0) - ctrl
                for prompt, out in ((exp, rs), (broken_prompt(exp, pert, ctx), nulls)):
                    pred = model.predict(exp, [(pert, ctx)], n_cells=100, prompt=prompt)
                    out.append(np.corrcoef(np.asarray(pred.X).mean(0) - ctrl, true)[0, 1])
        figures[f"{name}_pearson"] = round(float(np.mean(rs)), 3)
        figures[f"{name}_pearson_broken_prompt"] = round(float(np.mean(nulls)), 3)
        figures[f"{name}_fit_s"] = round(fit_s, 1)
        print(name, figures[f"{name}_pearson"], figures[f"{name}_pearson_broken_prompt"],
              figures[f"{name}_fit_s"], flush=True)
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
