"""End to end: ``perturbcast train`` against arc-state's ``state tx train`` on one h5ad.

Both command lines are run as a user would, from file to saved model, on the same simulated
screen (log1p expression of ``--genes`` genes in ``X`` and ``obsm["X_hvg"]``; perturbation in
``obs.gene``, context in ``obs.cell_type``, batch in ``obs.gem_group``), at the same width,
depth, heads, feed-forward size, set size (64) and sets per step (16). arc-state gets its
``state_sm`` model with those sizes, cell-load as its data loader, no W&B, validation and
checkpoints only at the end. We run ``transition`` (energy distance, the same objective as
arc-state's ST) in gene space (matched input) and in our default 64-d PCA latent.

Each command runs twice, with ``--short`` and ``--long`` steps: the difference gives the
steady-state training rate (cells/s = steps x 16 x 64 / seconds, data loading included) and the
rest is the fixed cost (start-up, reading, set-up, saving). ``*_vs_arc_state`` ratios compare
the steady rates and the whole ``--long`` runs, measured in this one run.

Run from an environment holding perturbcast and arc-state (``pip install -e .[bench]``,
Python < 3.13; install torch first):

    python benchmarks/bench_cli_vs_arc_state.py [--short 20] [--long 220] [--arc-workers 2]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from perturbcast.datasets import simulate
from perturbcast.modules.blocks import SwiGLU

SET_SIZE, N_SETS = 64, 16


def write_data(folder: Path, n_genes: int) -> Path:
    adata = simulate(n_genes=n_genes, n_singles=20, n_combos=0, n_contexts=3,
                     cells_per_condition=150, control_cells=1000, seed=0)
    x = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, np.float32)
    x = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)
    adata.X = x
    adata.obsm["X_hvg"] = x
    adata.obs["gene"] = adata.obs["perturbation"].astype(str)
    adata.obs["cell_type"] = adata.obs["context"].astype(str)
    adata.obs["gem_group"] = adata.obs["batch"].astype(str)
    del adata.uns["true_effects"]
    (folder / "sim").mkdir()
    path = folder / "sim" / "screen.h5ad"
    adata.write_h5ad(path)
    test_ctx = sorted(adata.obs.cell_type.unique())[-1]
    (folder / "split.toml").write_text(
        f'[datasets]\nscreen = "{path}"\n\n[training]\nscreen = "train"\n\n'
        f'[zeroshot]\n"screen.{test_ctx}" = "test"\n')
    return path


def ours(bin_dir: Path, data: Path, out: Path, steps: int, args, space: str) -> list[str]:
    params = dict(space=space, max_steps=steps, max_epochs=None, patience=10**6, set_size=SET_SIZE,
                  n_sets=N_SETS, dim=args.dim, depth=args.depth, n_heads=args.n_heads)
    cmd = [str(bin_dir / "perturbcast"), "train", "--data", str(data), "--perturbation-key",
           "gene", "--control", "control", "--context-key", "cell_type", "--batch-key",
           "gem_group", "--model", "transition", "--out", str(out)]
    for k, v in params.items():
        cmd += ["--param", f"{k}={v}"]
    return cmd


def arc_state(bin_dir: Path, folder: Path, out: Path, steps: int, args) -> list[str]:
    head = args.dim // args.n_heads
    kw = "model.kwargs.transformer_backbone_kwargs"
    return [str(bin_dir / "state"), "tx", "train",
            f"data.kwargs.toml_config_path={folder / 'split.toml'}",
            "data.kwargs.embed_key=X_hvg", "data.kwargs.output_space=gene",
            f"data.kwargs.num_workers={args.arc_workers}", "data.kwargs.pin_memory=false",
            "data.kwargs.pert_col=gene", "data.kwargs.cell_type_key=cell_type",
            "data.kwargs.batch_col=gem_group", "data.kwargs.control_pert=control",
            "model=state_sm", f"model.kwargs.cell_set_len={SET_SIZE}",
            f"model.kwargs.hidden_dim={args.dim}",
            f"{kw}.intermediate_size={SwiGLU(args.dim).w1.out_features}",
            f"{kw}.num_hidden_layers={args.depth}", f"{kw}.num_attention_heads={args.n_heads}",
            f"{kw}.num_key_value_heads={args.n_heads}", f"{kw}.head_dim={head}",
            f"training.batch_size={N_SETS}", f"training.max_steps={steps}",
            f"training.val_freq={steps + 1}", f"training.ckpt_every_n_steps={steps + 1}",
            "use_wandb=false", f"output_dir={out}", "name=run", "overwrite=true"]


def timed(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        res = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    secs = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"{cmd[0]} failed (exit {res.returncode}); see {log}")
    return secs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--short", type=int, default=20)
    ap.add_argument("--long", type=int, default=220)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--arc-workers", type=int, default=2, help="cell-load DataLoader workers")
    ap.add_argument("--keep", type=Path, default=None, help="keep data and logs here")
    args = ap.parse_args()
    bin_dir = Path(sys.executable).parent
    have_arc = shutil.which("state", path=str(bin_dir)) is not None
    folder = args.keep or Path(tempfile.mkdtemp(prefix="pc_vs_arc_"))
    folder.mkdir(parents=True, exist_ok=True)
    data = write_data(folder, args.genes)
    runs = {"transition_genes": lambda o, n: ours(bin_dir, data, o, n, args, "genes"),
            "transition_pca": lambda o, n: ours(bin_dir, data, o, n, args, "pca")}
    if have_arc:
        runs["arc_state_ST"] = lambda o, n: arc_state(bin_dir, folder, o, n, args)
    secs: dict[str, dict[int, float]] = {name: {} for name in runs}
    for steps in (args.short, args.long):  # alternate the tools at each length
        for name, make in runs.items():
            out = folder / f"{name}_{steps}"
            secs[name][steps] = timed(make(out, steps), folder / f"{name}_{steps}.log")
    cells = N_SETS * SET_SIZE
    rates, fixed = {}, {}
    for name, s in secs.items():
        per_step = (s[args.long] - s[args.short]) / (args.long - args.short)
        rates[name] = cells / per_step
        fixed[name] = s[args.short] - args.short * per_step
    table = Table(title=f"command line, file to saved model: {args.genes} genes, dim {args.dim}, "
                        f"depth {args.depth}, {N_SETS} sets x {SET_SIZE} cells per step")
    for col in ("run", f"{args.long} steps s", "steady cells/s", "fixed s", "vs arc-state"):
        table.add_column(col)
    figures = {"genes": str(args.genes), "dim": str(args.dim), "long_steps": str(args.long),
               "arc_state": "installed" if have_arc else "not_installed",
               "arc_workers": str(args.arc_workers)}
    for name in runs:
        ratio = rates[name] / rates["arc_state_ST"] if have_arc else None
        whole = secs["arc_state_ST"][args.long] / secs[name][args.long] if have_arc else None
        table.add_row(name, f"{secs[name][args.long]:.1f}", f"{rates[name]:,.0f}",
                      f"{fixed[name]:.1f}",
                      f"{ratio:.2f}x steady, {whole:.2f}x whole run" if ratio else "-")
        figures[f"{name}_steady_cells_s"] = f"{rates[name]:.0f}"
        figures[f"{name}_fixed_s"] = f"{fixed[name]:.1f}"
        figures[f"{name}_long_s"] = f"{secs[name][args.long]:.1f}"
        if ratio and name != "arc_state_ST":
            figures[f"{name}_vs_arc_state_steady"] = f"{ratio:.2f}"
            figures[f"{name}_vs_arc_state_whole"] = f"{whole:.2f}"
    Console().print(table)
    print(f"data and logs: {folder}")
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
