"""Lightning wiring for set models: AdamW + warmup/cosine, validation, early stopping.

The model supplies a ``loss_fn(net, batch) -> Tensor``, optionally a different validation
measure ``val_fn`` (the set models use the energy distance between generated and held-out real
sets: the per-cell training loss of flow matching keeps falling on training cells while the
model memorises them, and is a poor guide to the quality of generated sets), and two batch
makers (training draws fresh random sets each step; validation batches are fixed once, so the
validation loss is comparable between epochs). The best weights by validation loss are
restored at the end; early stopping counts epochs without a significant (relative
``min_delta``) improvement. Checkpoints (optional ``checkpoint_dir``) carry the model's config,
gene list and perturbation vocabulary under ``checkpoint["perturbcast"]``.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset

Batch = dict[str, Tensor]
LossFn = Callable[[nn.Module, Batch], Tensor]


@dataclass
class TrainConfig:
    """Optimisation settings (steps are optimiser steps; an epoch is ``steps_per_epoch``)."""

    max_steps: int = 2000
    steps_per_epoch: int = 100
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    patience: int = 5  # epochs without a significant validation improvement before stopping
    min_delta: float = 0.01  # significant: below (1 - min_delta) x the best loss so far
    grad_clip: float = 1.0
    precision: str = "auto"  # "auto": bf16-mixed on CUDA, else 32-true
    show_progress: bool = False
    checkpoint_dir: str | None = None


class _Stream(IterableDataset):
    def __init__(self, make: Callable[[], Batch], n: int) -> None:
        self.make, self.n = make, n

    def __iter__(self):
        for _ in range(self.n):
            yield self.make()


class _Fixed(IterableDataset):
    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


class SetTrainingModule(L.LightningModule):
    """Wraps ``net`` and its ``loss_fn``; ``meta`` is stored in every checkpoint."""

    def __init__(self, net: nn.Module, loss_fn: LossFn, config: TrainConfig,
                 meta: dict[str, Any], val_fn: LossFn | None = None) -> None:
        super().__init__()
        self.net, self.loss_fn, self.config, self.meta = net, loss_fn, config, meta
        self.val_fn = val_fn or loss_fn
        self.best_loss = math.inf
        self.best_state: dict[str, Tensor] | None = None
        self.history: list[float] = []
        self.reference = math.inf  # the last significantly better loss
        self.wait = 0
        self.stopped_early = False

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = self.loss_fn(self.net, batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=1)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        state = torch.get_rng_state()
        torch.manual_seed(1000 + batch_idx)  # the same flow times / noise every epoch
        with torch.no_grad():
            loss = self.val_fn(self.net, batch)
        torch.set_rng_state(state)
        self.log("val_loss", loss, prog_bar=True, batch_size=1, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        loss = float(self.trainer.callback_metrics.get("val_loss", math.inf))
        self.history.append(round(loss, 5))
        if loss < self.best_loss:
            self.best_loss = loss
            self.best_state = copy.deepcopy(self.net.state_dict())
        if loss < self.reference * (1 - self.config.min_delta):
            self.reference, self.wait = loss, 0
        else:
            self.wait += 1
            if self.wait >= self.config.patience:
                self.stopped_early = True
                self.trainer.should_stop = True

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["perturbcast"] = self.meta

    def configure_optimizers(self):
        cfg = self.config
        opt = torch.optim.AdamW(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        def schedule(step: int) -> float:
            if step < cfg.warmup_steps:
                return (step + 1) / cfg.warmup_steps
            frac = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def train_network(net: nn.Module, loss_fn: LossFn, make_batch: Callable[[], Batch],
                  val_batches: list[Batch], config: TrainConfig, meta: dict[str, Any],
                  val_fn: LossFn | None = None) -> dict[str, Any]:
    """Train ``net`` in place; returns a summary (steps, epochs, whether it stopped early,
    best/last validation loss).

    Early stopping: after ``patience`` epochs in which the validation loss did not fall below
    ``(1 - min_delta)`` times the last such improvement, training stops (the best weights, by
    any improvement, are restored)."""
    module = SetTrainingModule(net, loss_fn, config, meta, val_fn)
    callbacks: list[L.Callback] = []
    if config.checkpoint_dir:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(
            config.checkpoint_dir, monitor="val_loss" if val_batches else None, save_top_k=1,
            filename="best"))
    cuda = torch.cuda.is_available()
    precision = config.precision if config.precision != "auto" else (
        "bf16-mixed" if cuda else "32-true")
    epochs = max(1, math.ceil(config.max_steps / config.steps_per_epoch))
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    trainer = L.Trainer(
        max_epochs=epochs, max_steps=config.max_steps, accelerator="gpu" if cuda else "cpu",
        devices=1, precision=precision, logger=False, callbacks=callbacks,
        enable_checkpointing=bool(config.checkpoint_dir), enable_model_summary=False,
        enable_progress_bar=config.show_progress, num_sanity_val_steps=0,
        gradient_clip_val=config.grad_clip, limit_val_batches=len(val_batches) or 0)
    train_dl = DataLoader(_Stream(make_batch, config.steps_per_epoch), batch_size=None)
    val_dl = DataLoader(_Fixed(val_batches), batch_size=None) if val_batches else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*IterableDataset.*")
        warnings.filterwarnings("ignore", ".*GPU available.*|.*TPU available.*")
        trainer.fit(module, train_dl, val_dl)
    last = float(trainer.callback_metrics.get("val_loss", math.nan))
    if module.best_state is not None:
        net.load_state_dict(module.best_state)
    net.cpu().eval()
    epochs = len(module.history) or int(trainer.current_epoch)
    return {"steps": int(trainer.global_step), "epochs": epochs,
            "stopped_early": module.stopped_early,
            "best_val_loss": module.best_loss, "last_val_loss": last,
            "val_loss_per_epoch": module.history}
