"""Lightning wiring for set models: AdamW + warmup/cosine, validation, early stopping.

The model supplies a ``loss_fn(net, batch) -> Tensor``, optionally a different validation
measure ``val_fn`` (the set models use the energy distance between generated and held-out real
sets: the per-cell training loss of flow matching keeps falling on training cells while the
model memorises them, and is a poor guide to the quality of generated sets), and two batch
makers (training draws fresh random sets each step; validation batches are fixed once, so the
validation loss is comparable between epochs). The best weights by validation loss are
restored at the end; early stopping counts epochs without a significant (relative
``min_delta``) improvement. ``devices``, ``num_nodes``, ``strategy`` and ``precision`` go to
``lightning.Trainer`` (DDP / FSDP on several GPUs or nodes; under torchrun or SLURM, Lightning
reads the ranks from the environment); :func:`~perturbcast.train.distributed.rank_share`
gives each rank its slice of a global batch. Checkpoints (optional ``checkpoint_dir``) carry
the model's config, gene list and perturbation vocabulary under ``checkpoint["perturbcast"]``.

Inside :func:`perturbcast.train.resume.resumable`, training writes ``last.ckpt`` (atomically)
every few steps and, with ``resume=True``, continues from it: weights, optimiser, schedule,
early stopping, the best weights so far and the RNG states of torch and of the set sampler are
restored, so a run killed and resumed on CPU ends with the same weights as one never
interrupted.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..errors import InputError, Terminated
from ..sigterm import ignore_further_sigterm, lightning_handles_sigterm
from .batch_streams import _Draws, _Fixed, _Stream
from .distributed import check_strategy, global_rank
from .resume import Resume, current_resume

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
    devices: int | str = 1  # processes per node ("auto": all accelerators)
    num_nodes: int = 1
    strategy: str = "auto"  # "ddp", "fsdp", ... (lightning strategies)
    show_progress: bool = False
    checkpoint_dir: str | None = None


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator and every CUDA generator for the body, then restore all of
    them, so a seeded validation pass does not replay the same training noise each epoch."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    cpu_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if cuda else None
    torch.default_generator.manual_seed(seed)
    if cuda:
        torch.cuda.manual_seed_all(seed)
    try:
        yield
    finally:
        torch.set_rng_state(cpu_state)
        if cuda:
            torch.cuda.set_rng_state_all(cuda_states)


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

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        state = getattr(self, "pending_torch_rng", None)
        if state is not None:
            torch.set_rng_state(state)
            if self.pending_val_loss is not None:
                self.trainer.callback_metrics["val_loss"] = self.pending_val_loss
            self.pending_torch_rng = self.pending_val_loss = None

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = self.loss_fn(self.net, batch)
        self.log("train_loss", loss, prog_bar=True, batch_size=1)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        with seeded_rng(1000 + batch_idx), torch.no_grad():  # same flow times / noise per epoch
            loss = self.val_fn(self.net, batch)
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
        stream = getattr(self, "stream", None)
        if stream is not None:
            checkpoint["perturbcast_resume"] = {
                "best_loss": self.best_loss, "best_state": self.best_state,
                "history": list(self.history), "torch_rng": torch.get_rng_state(),
                "reference": self.reference, "wait": self.wait,
                "stopped_early": self.stopped_early,
                "val_loss": self.trainer.callback_metrics.get("val_loss"),
                "sampler_rng": stream.state_before(int(checkpoint["global_step"]))}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state, stream = checkpoint.get("perturbcast_resume"), getattr(self, "stream", None)
        if state is None or stream is None:
            return
        self.best_loss, self.best_state = state["best_loss"], state["best_state"]
        self.history = list(state["history"])
        self.reference, self.wait = state["reference"], state["wait"]
        self.stopped_early = state["stopped_early"]
        # set just before the next step: creating the data iterator draws from torch's RNG
        self.pending_torch_rng = state["torch_rng"]
        self.pending_val_loss = state["val_loss"]  # early stopping reads it at epoch end
        if stream.rng is not None and state["sampler_rng"] is not None:
            stream.rng.bit_generator.state = state["sampler_rng"]
        step = int(checkpoint["global_step"])
        stream.drawn, stream.first = step, stream.n - step % stream.n

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


class _ResumeCheckpoint(L.Callback):
    """Writes ``last.ckpt`` atomically every ``every_n_steps`` steps, never on the last step
    of an epoch (Lightning resumes mid-epoch exactly; at an epoch end the validation and early
    stopping of that epoch would be skipped), so it may come a step later."""

    def __init__(self, resume: Resume, steps_per_epoch: int) -> None:
        self.resume, self.steps_per_epoch, self.saved = resume, steps_per_epoch, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step - self.saved < self.resume.every_n_steps or step % self.steps_per_epoch == 0:
            return
        self.resume.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.resume.directory / ".last.ckpt.tmp"
        trainer.save_checkpoint(tmp)
        os.replace(tmp, self.resume.last)
        self.saved = step


def train_network(net: nn.Module, loss_fn: LossFn, make_batch: Callable[[], Batch],
                  val_batches: list[Batch], config: TrainConfig, meta: dict[str, Any],
                  val_fn: LossFn | None = None, sampler_rng=None,
                  dataset: torch.utils.data.Dataset | None = None,
                  num_workers: int = 0) -> dict[str, Any]:
    """Train ``net`` in place; returns a summary (steps, epochs, whether it stopped early,
    best/last validation loss).

    Early stopping: after ``patience`` epochs in which the validation loss did not fall below
    ``(1 - min_delta)`` times the last such improvement, training stops (the best weights, by
    any improvement, are restored). ``sampler_rng`` (numpy Generator used by ``make_batch``)
    is saved in resumable checkpoints. With ``dataset`` (map-style: batch number -> batch, a
    function of the number only), batches come from it instead of ``make_batch``, fetched by
    ``num_workers`` DataLoader worker processes.
    """
    check_strategy(config.strategy)
    module = SetTrainingModule(net, loss_fn, config, meta, val_fn)
    resume = current_resume()
    callbacks: list[L.Callback] = []
    if resume is not None:
        callbacks.append(_ResumeCheckpoint(resume, config.steps_per_epoch))
    if config.checkpoint_dir:
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(
            config.checkpoint_dir, monitor="val_loss" if val_batches else None, save_top_k=1,
            filename="best"))
    cuda = torch.cuda.is_available()
    precision = config.precision if config.precision != "auto" else (
        "bf16-mixed" if cuda else "32-true")
    precision = "32-true" if precision == "32" else precision
    epochs = max(1, math.ceil(config.max_steps / config.steps_per_epoch))
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    trainer = L.Trainer(
        max_epochs=epochs, max_steps=config.max_steps, accelerator="gpu" if cuda else "cpu",
        devices=config.devices, num_nodes=config.num_nodes, strategy=config.strategy,
        precision=precision, logger=False, callbacks=callbacks,
        enable_checkpointing=bool(config.checkpoint_dir), enable_model_summary=False,
        enable_progress_bar=config.show_progress, num_sanity_val_steps=0,
        gradient_clip_val=config.grad_clip, limit_val_batches=len(val_batches) or 0,
        use_distributed_sampler=False)  # ranks take their share of each batch themselves
    if dataset is None:
        module.stream = _Stream(make_batch, config.steps_per_epoch, sampler_rng)
        train_dl = DataLoader(module.stream, batch_size=None)
    else:
        module.stream = _Draws(config.steps_per_epoch)
        train_dl = DataLoader(dataset, batch_size=None, sampler=module.stream,
                              num_workers=num_workers)
    ckpt = None
    if resume is not None and resume.resume:
        ckpt = str(resume.last) if resume.last.exists() else None
        step = _check_resumable(ckpt, meta)
        rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))  # before fit's init
        if global_rank() == 0 and int(rank) == 0:  # once, however the ranks were launched
            print(f"resuming from step {step} ({ckpt})", file=sys.stderr, flush=True)
    val_dl = DataLoader(_Fixed(val_batches), batch_size=None) if val_batches else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*IterableDataset.*")
        warnings.filterwarnings("ignore", ".*GPU available.*|.*TPU available.*")
        # no validation cells: the models say so themselves (what it means: no early stop)
        warnings.filterwarnings("ignore", ".*validation_step.*no .val_dataloader.*")
        # torch's deprecation notice to Lightning's own code; says nothing about the run
        warnings.filterwarnings("ignore", ".*LeafSpec.*", category=FutureWarning)
        try:
            with lightning_handles_sigterm():
                trainer.fit(module, train_dl, val_dl, ckpt_path=ckpt)
        except SIGTERMException as exc:  # Lightning exits with code 0: say it was stopped
            ignore_further_sigterm()
            raise Terminated(int(trainer.global_step)) from exc
    if getattr(trainer, "received_sigterm", False):  # after the last check: fit returned
        ignore_further_sigterm()
        raise Terminated(int(trainer.global_step))
    last = float(trainer.callback_metrics.get("val_loss", math.nan))
    if module.best_state is not None:
        net.load_state_dict(module.best_state)
    net.cpu().eval()
    epochs = len(module.history) or int(trainer.current_epoch)
    return {"steps": int(trainer.global_step), "epochs": epochs,
            "stopped_early": module.stopped_early,
            "best_val_loss": module.best_loss, "last_val_loss": last,
            "val_loss_per_epoch": module.history}


def _check_resumable(ckpt: str | None, meta: dict[str, Any]) -> int:
    """Fail with one line when there is no checkpoint, or it is of another training run;
    else return the checkpoint's step."""
    import json

    if ckpt is None:
        raise InputError("--resume: no checkpoint to resume from; run again without --resume.")
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        saved = state.get("perturbcast")
    except Exception as exc:  # noqa: BLE001 - a damaged file is a user-facing problem
        raise InputError(f"--resume: {ckpt} cannot be read ({type(exc).__name__}); run again "
                         "without --resume.") from exc
    same = json.dumps(saved, sort_keys=True, default=str) == json.dumps(meta, sort_keys=True,
                                                                         default=str)
    if not same:
        raise InputError(f"--resume: {ckpt} is from a run with other data, model or parameters; "
                         "rerun with the same options, or without --resume.")
    return int(state.get("global_step", 0))
