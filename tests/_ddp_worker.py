"""Train a tiny transition model and record what each rank saw (run by tests/test_distributed.py
under ``torchrun --nproc_per_node=2``, or imported for the single-process reference)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from perturbcast import read_experiment, simulate
from perturbcast.models import get_model

PARAMS = dict(max_steps=6, n_sets=4, set_size=8, dim=16, depth=1, n_heads=2, n_latent=8,
              learned_dropout=0.0, context_dropout=0.0, patience=100)


def tiny_screen():
    return simulate(n_genes=30, n_singles=4, n_combos=0, n_contexts=1, n_batches=1,
                    cells_per_condition=40, control_cells=80, seed=1)


def train_and_record(devices: int, strategy: str = "auto", store: str | None = None):
    """Fit on a tiny simulated screen (or its store: sets from the store sampler); returns
    (weights, x1 of every training batch)."""
    exp = read_experiment(store or tiny_screen(), "perturbation", "control")
    model = get_model("transition", seed=0, devices=devices, strategy=strategy, **PARAMS)
    seen: list[np.ndarray] = []
    loss = model.loss

    def recording_loss(net, batch):
        if net.training:
            seen.append(batch["x1"].detach().numpy().copy())
        return loss(net, batch)

    model.loss = recording_loss
    model.fit(exp)
    assert model.training_summary["sampler"] == ("store" if store else "rows")
    weights = {k: v.detach().numpy() for k, v in model.net.state_dict().items()}
    return weights, np.stack(seen)


if __name__ == "__main__":
    out = Path(sys.argv[1])
    stores = [None] + sys.argv[4:5]  # the in-memory screen, then its store if given
    for store in stores:
        w, seen = train_and_record(int(sys.argv[2]), sys.argv[3], store)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        name = f"{'store_' if store else ''}rank{rank}.npz"
        np.savez(out / name, seen=seen, **{f"w.{k}": v for k, v in w.items()})
