"""Base class of the set models (``flow``, ``transition``): data, training, prediction, saving.

A set model learns, per training condition (perturbation, context), to turn a set of control
cells of that context (same batch when available) into the perturbed set. Subclasses choose
the objective (:meth:`loss`), how a drawn pair of sets is arranged (:meth:`arrange`) and how
the perturbed set is generated from the controls (:meth:`generate`), as in torchcfm.

Parameters (all saved with the model)
-------------------------------------
space : "pca" (default) or "genes"; n_latent : PCA size
set_size, n_sets : cells per set and sets per optimiser step
dim, depth, n_heads : set encoder size
max_steps, lr, patience, val_fraction : training; validation sets are held-out perturbed
    cells of every training condition, generated from training controls (``val_controls=
    "held_out"`` holds out controls too), scored by the error of the set's mean change
    (+ energy distance with ``val_energy``); the best epoch's weights are kept
embeddings : "default" (the built-in human gene table; "train" with a warning when it has no row
    for any training perturbation), "train" (gene features from training data), "none", or a
    table path (csv/parquet/npz); several comma-separated are joined side by side (see
    :func:`~perturbcast.models.perturbation_features.resolve_embeddings`)
dose_key : obs column with a dose per cell (scalar input), or None
devices, num_nodes, strategy, precision : passed to ``lightning.Trainer`` (multi-GPU / multi-node;
    under DDP each step's ``n_sets`` sets are split evenly over the ranks, so a run on k
    processes takes the same optimiser steps as one process with the same global batch)
memory_budget_gb : load the training cells densely when they fit in this many GB, else read
    each batch's cells from disk (out-of-core data; announced with a warning)
learned_dropout, context_dropout : see :class:`~perturbcast.modules.PerturbationEncoder`;
    context/batch labels are dropped with this probability so "unknown" is learned too
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..data.experiment import Experiment
from ..data.sets import SetBatch, SetSampler, holdout_cells
from ..errors import InputError
from ..modules.losses import energy_loss
from ..modules.set_net import ConditionalSetNet
from ..train.lightning import TrainConfig, rank_share, train_network
from ..utils import seed_everything
from .base import PerturbationModel
from .latent import LatentSpace
from .perturbation_features import (
    PerturbationFeatures,
    numeric_doses,
    resolve_embeddings,
    training_gene_features,
)
from .training_rows import TrainingRows

DEFAULTS: dict[str, Any] = dict(
    space="pca", n_latent=64, set_size=64, n_sets=16, dim=128, depth=4, n_heads=4,
    max_steps=1000, lr=1e-3, patience=5, val_fraction=0.1, embeddings="default", dose_key=None,
    learned_dropout=0.5, context_dropout=0.2, checkpoint_dir=None, show_progress=False,
    val_energy=False, val_controls="train", memory_budget_gb=4.0,
    devices=1, num_nodes=1, strategy="auto", precision="auto",
)
CHOICES: dict[str, tuple] = {"space": ("pca", "genes"), "solver": ("euler", "midpoint", "rk4"),
                             "val_controls": ("train", "held_out"),
                             "strategy": ("auto", "ddp", "fsdp", "ddp_spawn"),
                             "precision": ("auto", "32", "32-true", "bf16-mixed", "16-mixed")}
N_VAL_BATCHES = 4
COND_KEYS = ("learned_idx", "features", "has_features", "dose", "context", "batch")


class SetModel(PerturbationModel):
    """Shared machinery; see the module docstring for the parameters."""

    name: ClassVar[str] = "set_model"
    takes_embeddings: ClassVar[bool] = True
    use_time: ClassVar[bool] = False
    extra_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, seed: int = 0, **params: Any) -> None:
        unknown = set(params) - set(DEFAULTS) - set(self.extra_defaults)
        if unknown:
            raise InputError(f"unknown parameter(s) for {self.name}: {sorted(unknown)}; "
                             f"known: {', '.join(sorted({**DEFAULTS, **self.extra_defaults}))}.")
        super().__init__(seed=seed, **{**DEFAULTS, **self.extra_defaults, **params})
        for key, allowed in CHOICES.items():
            if key in self.params and self.params[key] not in allowed:
                raise InputError(f"{self.name}: {key}={self.params[key]!r} is not one of "
                                 f"{', '.join(map(str, allowed))}.")
        self.net: ConditionalSetNet | None = None
        self.training_summary: dict[str, Any] = {}

    # ---- subclass hooks --------------------------------------------------------------------------
    def arrange(self, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
        """Order of x1's cells to pair with x0's, per set: (n_sets, set_size) int."""
        return np.broadcast_to(np.arange(x1.shape[1]), x1.shape[:2])

    def loss(self, net: ConditionalSetNet, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def generate(self, net: ConditionalSetNet, x0: Tensor, cond: dict[str, Tensor],
                 mask: Tensor | None) -> Tensor:
        raise NotImplementedError

    def validation_loss(self, net: ConditionalSetNet, batch: dict[str, Tensor]) -> Tensor:
        """Squared error of the mean change between generated and held-out real sets
        (relative to the mean change itself), plus their energy distance if
        ``val_energy``."""
        cond = {k: batch[k] for k in COND_KEYS}
        gen = self.generate(net, batch["x0"], cond, None)
        real_change = batch["x1"].mean(1) - batch["x0"].mean(1)
        err = (gen.mean(1) - batch["x1"].mean(1)).pow(2).sum(-1).mean()
        loss = err / real_change.pow(2).sum(-1).mean().clamp_min(1e-8)
        if self.params["val_energy"]:
            loss = loss + energy_loss(gen, batch["x1"])
        return loss

    # ---- fitting -----------------------------------------------------------------------------
    def check_can_predict(self, exp: Experiment, perturbations, train_mask=None) -> None:
        """Raise before training if a perturbation to predict would have neither a learned
        embedding (seen in training) nor a feature row (see :meth:`_feature_names`)."""
        mask = np.ones(exp.n_cells, bool) if train_mask is None else np.asarray(train_mask, bool)
        learned = sorted({c for p in set(exp.perturbations[mask]) for c in exp.components(p)})
        names = self._feature_names(exp, learned)
        PerturbationFeatures(learned, names, np.zeros((len(names), 0), np.float32),
                             exp.separator, exp.control).check(list(perturbations))

    def _feature_names(self, exp: Experiment, learned: list[str]) -> np.ndarray:
        """Names that will have a feature vector for ``embeddings`` (no training needed)."""
        genes = exp.genes.astype(str)
        with warnings.catch_warnings():  # the fit itself announces a switch to "train"
            warnings.simplefilter("ignore")
            names, _, _ = resolve_embeddings(
                self.params["embeddings"], learned,
                lambda: (genes, np.zeros((len(genes), 0), np.float32)), self.name)
        return names

    def _fit(self, exp: Experiment, mask: np.ndarray) -> None:
        p = self.params
        seed_everything(self.seed)
        rng = np.random.default_rng(self.seed)
        idx = np.flatnonzero(mask)
        x = TrainingRows(exp, idx, p["memory_budget_gb"])
        perts = exp.perturbations[idx].astype(str)
        ctxs = exp.contexts[idx].astype(str)
        batches = exp.batches[idx].astype(str) if exp.batches is not None else None
        is_ctrl = perts == exp.control
        self.latent = x.fit_latent(LatentSpace(p["space"], p["n_latent"]), rng)

        groups = pd.DataFrame({"p": perts, "c": ctxs})[~is_ctrl].groupby(["p", "c"]).indices
        cond_keys = sorted(groups)
        cond_cells = [np.flatnonzero(~is_ctrl)[groups[k]] for k in cond_keys]
        self.context_names = sorted({c for _, c in cond_keys})
        self.batch_names = sorted(set(batches)) if batches is not None else []
        ctx_id = {c: i + 1 for i, c in enumerate(self.context_names)}
        cell_ctx = np.array([ctx_id.get(c, 0) for c in ctxs])
        cell_batch = (np.searchsorted(self.batch_names, batches) + 1) if batches is not None \
            else None
        self.doses = self._training_doses(exp, idx, perts)
        self.features = self._build_features(exp, x, perts, ctxs, is_ctrl, cond_keys, cond_cells)
        enc = self.features.encode([k[0] for k in cond_keys],
                                   [self.doses.get(k[0], 0.0) for k in cond_keys])
        enc["context"] = np.array([ctx_id[k[1]] for k in cond_keys])

        train_cells, val_cells = holdout_cells(cond_cells, p["val_fraction"], rng)
        ctrl_groups = [np.flatnonzero(is_ctrl & (cell_ctx == c)) for c in np.unique(cell_ctx)]
        if p["val_controls"] == "held_out":
            ctrl_train, ctrl_val = holdout_cells(ctrl_groups, p["val_fraction"], rng)
        else:  # validation sets start from training controls, as predictions in a benchmark do
            ctrl_train = ctrl_val = ctrl_groups

        def sampler(cells: list[np.ndarray], ctrl: list[np.ndarray], keep: np.ndarray):
            is_c = np.zeros(len(idx), bool)
            is_c[np.concatenate(ctrl)] = True
            return SetSampler([cells[i] for i in keep], enc["context"][keep], cell_ctx,
                              cell_batch, is_c, p["set_size"])

        all_conds = np.arange(len(cond_keys))
        train_sampler = sampler(train_cells, ctrl_train, all_conds)
        val_keep = np.array([i for i, v in enumerate(val_cells) if v.size], int)
        has_val_ctrl = all(c.size for c in ctrl_val)
        enc_t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in enc.items()}

        def make(smp: SetSampler, keep: np.ndarray, r: np.random.Generator, drop: float,
                 share: bool = False):
            b = smp.sample(p["n_sets"], r)  # the global batch, drawn alike on every rank
            b.condition = keep[b.condition]
            n = len(b.condition)
            ctx_keep = r.random(n) >= drop if drop > 0 else np.ones(n, bool)
            batch_keep = r.random(n) >= drop if drop > 0 else np.ones(n, bool)
            if share:  # DDP: this rank's equal, disjoint share of the global batch
                mine = rank_share(n)
                b = SetBatch(b.ctrl[mine], b.pert[mine], b.condition[mine], b.batch[mine])
                ctx_keep, batch_keep = ctx_keep[mine], batch_keep[mine]
            return self._batch_tensors(b, x, enc_t, ctx_keep, batch_keep)

        self.net = self._new_net(x.dim)
        val_batches = []
        if val_keep.size and has_val_ctrl:
            val_sampler = sampler(val_cells, ctrl_val, val_keep)
            vr = np.random.default_rng(self.seed + 1)
            val_batches = [make(val_sampler, val_keep, vr, 0.0) for _ in range(N_VAL_BATCHES)]
        else:
            warnings.warn(f"{self.name}: no validation cells (val_fraction={p['val_fraction']}, "
                          f"groups too small to hold any out), so no early stopping: training "
                          f"runs all max_steps={p['max_steps']} and keeps the last weights.",
                          stacklevel=3)
        config = TrainConfig(max_steps=p["max_steps"], lr=p["lr"], patience=p["patience"],
                             checkpoint_dir=p["checkpoint_dir"], show_progress=p["show_progress"],
                             warmup_steps=min(100, max(1, p["max_steps"] // 10)),
                             steps_per_epoch=min(100, p["max_steps"]), devices=p["devices"],
                             num_nodes=p["num_nodes"], strategy=p["strategy"],
                             precision=p["precision"])
        meta = {"model": self.name, "params": self.params, "genes": self.genes.tolist(),
                "vocabulary": self.vocabulary, "contexts": self.contexts}
        self.training_summary = train_network(
            self.net, self.loss, lambda: make(train_sampler, all_conds, rng,
                                              p["context_dropout"], True), val_batches, config,
            meta, self.validation_loss, sampler_rng=rng)
        self.training_summary["data_mode"] = x.mode

    def _batch_tensors(self, b: SetBatch, x: TrainingRows, enc: dict[str, Tensor],
                       ctx_keep: np.ndarray, batch_keep: np.ndarray) -> dict[str, Tensor]:
        x0, x1 = x.z(b.ctrl), x.z(b.pert)
        order = self.arrange(x0, x1)
        x1 = np.take_along_axis(x1, np.asarray(order)[..., None], axis=1)
        cond = torch.from_numpy(b.condition)
        out = {k: v[cond] for k, v in enc.items()}
        batch = torch.from_numpy(np.maximum(b.batch, 0))
        out["context"] = out["context"] * torch.from_numpy(ctx_keep)
        out["batch"] = batch * torch.from_numpy(batch_keep)
        out["x0"] = torch.from_numpy(np.ascontiguousarray(x0))
        out["x1"] = torch.from_numpy(np.ascontiguousarray(x1))
        return out

    def _training_doses(self, exp: Experiment, idx: np.ndarray, perts: np.ndarray):
        key = self.params["dose_key"]
        if key is None:
            return {}
        if key not in exp.adata.obs:
            raise InputError(f"{self.name}: dose_key {key!r} is not an obs column; pass an obs "
                             f"column of numeric doses, or dose_key=None.")
        dose = numeric_doses(exp.adata.obs[key].to_numpy()[idx], key)
        return pd.Series(dose).groupby(perts).median().fillna(0.0).to_dict()

    def _build_features(self, exp, x, perts, ctxs, is_ctrl, cond_keys, cond_cells):
        learned = sorted({c for k in cond_keys for c in exp.components(k[0])})

        def train_table() -> tuple[np.ndarray, np.ndarray]:
            ctrl_mean = {c: x.mean(np.flatnonzero(is_ctrl & (ctxs == c)))
                         for c in np.unique(ctxs[is_ctrl])}
            glob = x.mean(np.flatnonzero(is_ctrl))
            deltas = np.stack([x.mean(cells) - ctrl_mean.get(k[1], glob)
                               for k, cells in zip(cond_keys, cond_cells, strict=True)])
            ctrl = np.flatnonzero(is_ctrl)
            ctrl = ctrl[np.random.default_rng(self.seed).permutation(ctrl.size)[:5000]]
            names = exp.genes.astype(str)
            return names, training_gene_features(names, deltas, x.read(ctrl))

        names, vecs, self.embeddings_used = resolve_embeddings(
            self.params["embeddings"], learned, train_table, self.name)
        if vecs.size:
            vecs = vecs / (vecs.std() + 1e-12)
        return PerturbationFeatures(learned, names, vecs, exp.separator, exp.control)

    def _new_net(self, n_in: int) -> ConditionalSetNet:
        p = self.params
        return ConditionalSetNet(n_in, p["dim"], p["depth"], p["n_heads"],
                                 len(self.features.learned), self.features.n_features,
                                 len(self.context_names), len(self.batch_names), self.use_time,
                                 p["learned_dropout"])

    # ---- prediction ----------------------------------------------------------------------------
    def _predict_cells(self, x_ctrl, perturbation, context, exp, ctrl_pool, ctrl_idx=None):
        dose = self._dose(exp, perturbation, context)
        enc = self.features.encode([perturbation], [dose])  # raises for an unknown perturbation
        n = x_ctrl.shape[0]
        if n == 0:
            return x_ctrl.copy()
        size = self.params["set_size"]
        use_batch = exp.batches is not None and ctrl_idx is not None and bool(self.batch_names)
        cell_batch = exp.batches[ctrl_idx].astype(str) if use_batch else np.zeros(n, str)
        if self.batch_names and not use_batch:
            warnings.warn(f"{self.name}: the model was trained with batches but the input has "
                          f"no batch key; every set is predicted as batch 'unknown'.",
                          stacklevel=3)
        unknown = sorted(map(str, set(cell_batch) - set(self.batch_names))) if use_batch else []
        if unknown:
            warnings.warn(f"{self.name}: batch(es) {unknown[:5]} were not in training; their "
                          f"sets are predicted as batch 'unknown'.", stacklevel=3)
        sets, set_batch = [], []
        for name in np.unique(cell_batch):
            g = np.flatnonzero(cell_batch == name)
            for chunk in np.array_split(g, int(np.ceil(g.size / size))):
                sets.append(chunk)
                set_batch.append(self._batch_id(name if use_batch else None))
        width = max(s.size for s in sets)
        z = self.latent.encode(x_ctrl)
        x0 = np.zeros((len(sets), width, z.shape[1]), np.float32)
        mask = np.zeros((len(sets), width), bool)
        for i, s in enumerate(sets):
            x0[i, :s.size] = z[s]
            mask[i, :s.size] = True
        ctx = self.context_names.index(context) + 1 if context in self.context_names else 0
        if ctx == 0:
            warnings.warn(f"{self.name}: context {context!r} had no perturbed training cells; "
                          f"predicted as context 'unknown'.", stacklevel=3)
        cond = {k: torch.from_numpy(np.repeat(v, len(sets), axis=0)) for k, v in enc.items()}
        cond["context"] = torch.full((len(sets),), ctx, dtype=torch.long)
        cond["batch"] = torch.as_tensor(set_batch, dtype=torch.long)
        torch.manual_seed(self.seed)
        with torch.no_grad():
            z1 = self.generate(self.net.eval(), torch.from_numpy(x0), cond,
                               torch.from_numpy(mask)).numpy()
        out = np.empty_like(z)
        for i, s in enumerate(sets):
            out[s] = z1[i, :s.size]
        return x_ctrl + self.latent.decode_change(out - z)

    def _batch_id(self, name) -> int:
        """1-based id of a training batch; 0 ('unknown') for None or an unseen batch."""
        if name is None or str(name) not in self.batch_names:
            return 0
        return self.batch_names.index(str(name)) + 1

    def _dose(self, exp: Experiment, pert: str, ctx: str) -> float:
        key = self.params["dose_key"]
        if key is None:
            return 0.0
        if key in exp.adata.obs:
            sel = (exp.perturbations == pert) & (exp.contexts == ctx)
            if sel.any():
                d = numeric_doses(exp.adata.obs[key].to_numpy()[sel], key)
                if np.isfinite(d).any():
                    return float(np.nanmedian(d))
        if pert not in self.doses:
            warnings.warn(f"{self.name}: no dose for {pert!r} (obs[{key!r}] of the input, or "
                          f"training); predicting it at dose 0.", stacklevel=3)
        return float(self.doses.get(pert, 0.0))

    # ---- saving --------------------------------------------------------------------------------
    def _state(self) -> dict[str, np.ndarray]:
        state = {**self.latent.state(), **self.features.state(),
                 "context_names": np.asarray(self.context_names, dtype=str),
                 "batch_names": np.asarray(self.batch_names, dtype=str),
                 "dose_names": np.asarray(list(self.doses), dtype=str),
                 "dose_values": np.asarray(list(self.doses.values()), np.float64)}
        for k, v in self.net.state_dict().items():
            state[f"net.{k}"] = v.detach().cpu().numpy()
        return state

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.latent = LatentSpace.from_state(state)
        self.features = PerturbationFeatures.from_state(state, self.keys["separator"],
                                                        self.keys["control"])
        self.context_names = list(state["context_names"].astype(str))
        self.batch_names = list(state["batch_names"].astype(str))
        self.doses = dict(zip(state["dose_names"].astype(str), state["dose_values"].tolist(),
                              strict=True))
        self.net = self._new_net(self.latent.dim)
        self.net.load_state_dict({k[4:]: torch.from_numpy(v) for k, v in state.items()
                                  if k.startswith("net.")})
        self.net.eval()

    def _save_extra(self, directory: Path) -> None:
        (directory / "training.json").write_text(json.dumps(self.training_summary, indent=2))

    def _load_extra(self, directory: Path) -> None:
        f = directory / "training.json"
        self.training_summary = json.loads(f.read_text()) if f.exists() else {}

