"""``perturbcast demo``: simulate a screen, run every model on a split, say who won.

The set models train briefly here (:data:`DEMO_PARAMS`) so the whole demo stays under two
minutes on 2 CPU cores; their scores are those of a short training, not of the defaults.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

#: Short training for the learned models in the demo (the rest keep their defaults). The
#: network alone (``base=none shrink=1``): the default fall-back's base choice and probes took
#: the demo past 8 CPU-minutes (was 174 s), so the demo shows the networks, not the fall-back.
SET_MODEL_DEMO = dict(max_steps=400, dim=64, depth=2, n_heads=4, set_size=32, n_sets=8,
                      n_latent=32, lr=2e-3, patience=3, base="none", shrink=1)
#: The in-context model's short demo training (its defaults: 200 + 300 steps, M=32, depth 4,
#: validation every 50 steps). It was 40 + 120 steps, 58% of the demo's CPU time; no validation,
#: since 80 steps leave nothing to stop early.
INCONTEXT_DEMO = dict(pretrain_steps=20, finetune_steps=80, n_modules=16, depth=2,
                      val_fraction=0.0)
DEMO_PARAMS: dict[str, dict[str, Any]] = {"flow": {**SET_MODEL_DEMO, "steps": 5},
                                          "transition": dict(SET_MODEL_DEMO),
                                          "incontext": dict(INCONTEXT_DEMO)}


def finish_benchmark(result, out_dir: Path, title: str, notes: list[str],
                     console: Console, split) -> None:
    """Write the report folder (all files or none: it appears when complete), print the
    table and the verdict, list what was written."""
    from .eval.html_report import write_html_report
    from .eval.report import print_summary, write_benchmark_report
    from .utils import atomic_path

    with atomic_path(out_dir, is_dir=True) as tmp:
        split.to_json(tmp / "split.json")
        write_benchmark_report(result, tmp, title, notes)
        write_html_report(tmp, result.report_data)
    print_summary(result.summary, title, result.best_baseline(), result.verdict())
    for cal in result.calibration():
        console.print(cal.line())
    wrote = sorted(f.name for f in Path(out_dir).iterdir() if f.is_file())
    console.print(f"wrote {out_dir}/: {', '.join(wrote)}")


def run_demo(out_dir: Path, split: str, seeds: list[int], console: Console) -> None:
    """Simulate (seed ``seeds[0]``), split, benchmark every registered model, report."""
    from .benchmark import run_benchmark
    from .data import make_split, read_experiment
    from .datasets import simulate
    from .models import MODELS

    t0 = time.perf_counter()
    adata = simulate(seed=seeds[0])
    exp = read_experiment(adata, "perturbation", "control", context_key="context",
                          batch_key="batch")
    sp = make_split(exp, split, n_folds=3, seed=seeds[0])
    console.print(f"simulated {exp.describe()}; split {split} with {len(sp.folds)} folds; "
                  f"models: {', '.join(MODELS)} (set models: short demo training)")
    params = {m: p for m, p in DEMO_PARAMS.items() if m in MODELS}
    result = run_benchmark(exp, sp, list(MODELS), model_params=params, seeds=seeds,
                           skip_unable=True)
    short = ", ".join(f"{k}={v}" for k, v in SET_MODEL_DEMO.items())
    finish_benchmark(result, out_dir, f"perturbcast demo (simulated, split={split})",
                     [f"Simulated data: {exp.describe()}.",
                      f"Seeds {','.join(map(str, seeds))}.",
                      f"Set models trained briefly for the demo ({short}); see "
                      f"`perturbcast benchmark` for full training."], console, sp)
    console.print(f"demo finished in {time.perf_counter() - t0:.1f}s")
