"""Training and prediction throughput of the set models (cells/s), beside arc-state's ST model.

Two measurements, both on this machine's device (CPU, or CUDA in bf16 autocast when present):

1. **Matched training steps** (the comparison with arc-state): forward, loss, backward and
   an AdamW step on in-memory sets of ``--n-sets`` x ``--set-size`` cells of ``--genes``
   genes, one-hot perturbations, at the same width, depth, heads and feed-forward size:
   ``transition`` (energy distance + mean term), ``flow`` (minibatch OT pairing included) and,
   when ``arc-state`` is importable, its ``StateTransitionPerturbationModel`` with a
   bidirectional LLaMA backbone and the ``state_sm`` settings (4-layer encoders/decoders,
   geomloss energy loss). Each model's time is the median over rounds that alternate the
   models. cells/s = perturbed cells per second; ``*_vs_arc_state`` is our rate over theirs,
   measured in this one run.
2. **End to end**: ``model.fit`` (set sampling, validation, PCA when ``space=pca``) and
   ``model.predict`` (flow: ODE with ``steps`` midpoint steps) on simulated data.

arc-state is an optional benchmark extra (``pip install -e .[bench]``, Python < 3.13), never a
core dependency; without it the line says ``arc_state=not_installed``.

    python benchmarks/bench_set_speed.py [--steps 200] [--dim 128] [--depth 4] [--set-size 64]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from perturbcast.data import read_experiment
from perturbcast.datasets import simulate
from perturbcast.models import get_model
from perturbcast.modules.blocks import SwiGLU
from perturbcast.modules.set_net import ConditionalSetNet

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


class StepTimer:
    """Times optimiser steps (forward, loss, backward, AdamW) of a training step function.

    ``round()`` times ``n_steps`` steps; callers alternate rounds across models and keep each
    model's median, so a burst of load on a shared machine does not favour one side.
    """

    def __init__(self, step: Callable[[], torch.Tensor], params, warmup: int = 3) -> None:
        self.step, self.opt, self.times = step, torch.optim.AdamW(params, lr=1e-4), []
        for _ in range(warmup):
            self._one()

    def _one(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=DEVICE == "cuda"):
            loss = self.step()
        loss.backward()
        self.opt.step()

    def round(self, n_steps: int) -> None:
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n_steps):
            self._one()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        self.times.append((time.perf_counter() - t0) / n_steps)

    def seconds_per_step(self) -> float:
        return float(np.median(self.times))


def synthetic_sets(args, n_perts: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    b, s = args.n_sets, args.set_size
    x0 = torch.rand(b, s, args.genes, generator=g) * 2
    x1 = torch.rand(b, s, args.genes, generator=g) * 2
    pert = torch.randint(0, n_perts, (b,), generator=g)
    return {k: v.to(DEVICE) for k, v in dict(x0=x0, x1=x1, pert=pert).items()}


def ours_step(name: str, args, data: dict[str, torch.Tensor], n_perts: int):
    model = get_model(name, seed=0)
    net = ConditionalSetNet(args.genes, args.dim, args.depth, args.n_heads, n_perts, 0, 1, 0,
                            model.use_time).to(DEVICE).train()
    b = data["x0"].shape[0]
    cond = {"learned_idx": data["pert"][:, None] + 1,
            "features": torch.zeros(b, 1, 0, device=DEVICE),
            "has_features": torch.zeros(b, 1, dtype=torch.bool, device=DEVICE),
            "dose": torch.zeros(b, device=DEVICE),
            "context": torch.ones(b, dtype=torch.long, device=DEVICE),
            "batch": torch.zeros(b, dtype=torch.long, device=DEVICE)}

    def step() -> torch.Tensor:
        x1 = data["x1"]
        if name == "flow":  # minibatch OT pairing is part of each training step
            order = model.arrange(data["x0"].cpu().numpy(), x1.cpu().numpy())
            x1 = torch.take_along_dim(x1, torch.from_numpy(order.copy()).to(DEVICE)[..., None], 1)
        return model.loss(net, {**cond, "x0": data["x0"], "x1": x1})

    return step, net.parameters()


def arc_state_step(args, data: dict[str, torch.Tensor], n_perts: int):
    from state.tx.models.state_transition import StateTransitionPerturbationModel

    s = args.set_size
    backbone = dict(bidirectional_attention=True, max_position_embeddings=s,
                    hidden_size=args.dim, intermediate_size=SwiGLU(args.dim).w1.out_features,
                    num_hidden_layers=args.depth, num_attention_heads=args.n_heads,
                    num_key_value_heads=args.n_heads, head_dim=args.dim // args.n_heads,
                    use_cache=False, attention_dropout=0.0, hidden_dropout=0.0,
                    layer_norm_eps=1e-6, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                    tie_word_embeddings=False, rotary_dim=0, use_rotary_embeddings=False)
    with contextlib.redirect_stdout(io.StringIO()):  # its constructor prints the module tree
        model = StateTransitionPerturbationModel(
            input_dim=args.genes, hidden_dim=args.dim, output_dim=args.genes, pert_dim=n_perts,
            gene_dim=args.genes, output_space="gene", embed_key=None, cell_set_len=s, blur=0.05,
            loss="energy", n_encoder_layers=4, n_decoder_layers=4, predict_residual=True,
            softplus=True, use_basal_projection=False, distributional_loss="energy",
            gene_decoder_bool=False, transformer_backbone_key="llama",
            transformer_backbone_kwargs=backbone, confidence_head=False, batch_encoder=False,
            mask_attn=False).to(DEVICE).train()
    one_hot = torch.nn.functional.one_hot(data["pert"], n_perts).float()
    batch = {"pert_emb": one_hot.repeat_interleave(s, 0),
             "ctrl_cell_emb": data["x0"].reshape(-1, args.genes),
             "pert_cell_emb": data["x1"].reshape(-1, args.genes)}
    return (lambda: model.training_step(batch, 0)), model.parameters()


def matched_steps(args, figures: dict[str, str], console: Console) -> None:
    n_perts = 20
    data = synthetic_sets(args, n_perts)
    cells = args.n_sets * args.set_size
    timers = {name: StepTimer(*ours_step(name, args, data, n_perts))
              for name in ("transition", "flow")}
    have_arc = importlib.util.find_spec("state") is not None
    figures["arc_state"] = "importable" if have_arc else "not_installed"
    if have_arc:
        timers["arc_state_ST"] = StepTimer(*arc_state_step(args, data, n_perts))
    for _ in range(args.rounds):
        for timer in timers.values():
            timer.round(args.matched_steps)
    rates = {name: cells / t.seconds_per_step() for name, t in timers.items()}
    table = Table(title=f"matched training steps on {DEVICE}: {args.n_sets} sets x "
                        f"{args.set_size} cells x {args.genes} genes, dim {args.dim}, "
                        f"depth {args.depth}, {args.n_heads} heads")
    for col in ("model", "train cells/s", "vs arc-state ST"):
        table.add_column(col)
    for name, rate in rates.items():
        ratio = rate / rates["arc_state_ST"] if have_arc else None
        table.add_row(name, f"{rate:,.0f}", f"{ratio:.1f}x" if ratio else "-")
        figures[f"step_{name}_cells_s"] = f"{rate:.0f}"
        if ratio and name != "arc_state_ST":
            figures[f"{name}_vs_arc_state"] = f"{ratio:.2f}"
    console.print(table)


def end_to_end(args, figures: dict[str, str], console: Console) -> None:
    adata = simulate(n_genes=args.genes, n_singles=20, n_combos=0, n_contexts=2,
                     cells_per_condition=200, control_cells=1000, seed=0)
    exp = read_experiment(adata, "perturbation", "control", context_key="context")
    conds = exp.conditions()
    n_pred = int(conds.n_cells.sum())
    table = Table(title=f"fit and predict on {DEVICE}: {exp.describe()}")
    for col in ("model", "space", "train cells/s", "predict cells/s", "fit s"):
        table.add_column(col)
    for name in ("flow", "transition"):
        for space in ("pca", "genes"):
            params = dict(dim=args.dim, depth=args.depth, n_heads=args.n_heads,
                          set_size=args.set_size, n_sets=args.n_sets, max_steps=args.steps,
                          max_epochs=None, patience=10**6, space=space)
            model = get_model(name, **params)
            t0 = time.perf_counter()
            model.fit(exp)
            fit_s = time.perf_counter() - t0
            train_rate = model.training_summary["steps"] * args.n_sets * args.set_size / fit_s
            t0 = time.perf_counter()
            model.predict(exp, conds)
            pred_rate = n_pred / (time.perf_counter() - t0)
            table.add_row(name, space, f"{train_rate:,.0f}", f"{pred_rate:,.0f}", f"{fit_s:.1f}")
            figures[f"{name}_{space}_train_cells_s"] = f"{train_rate:.0f}"
            figures[f"{name}_{space}_predict_cells_s"] = f"{pred_rate:.0f}"
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=200, help="training steps per end-to-end fit")
    ap.add_argument("--matched-steps", type=int, default=5, help="timed steps per round")
    ap.add_argument("--rounds", type=int, default=5, help="rounds, alternating the models")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--set-size", type=int, default=64)
    ap.add_argument("--n-sets", type=int, default=16)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--skip-end-to-end", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    figures: dict[str, str] = {"device": DEVICE, "threads": str(torch.get_num_threads()),
                               "dim": str(args.dim), "depth": str(args.depth),
                               "set_size": str(args.set_size), "genes": str(args.genes)}
    console = Console()
    matched_steps(args, figures, console)
    if not args.skip_end_to_end:
        end_to_end(args, figures, console)
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
