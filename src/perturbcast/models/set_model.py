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
max_epochs, min_steps, max_steps : training budget: ``max_epochs`` passes over the training
    perturbed cells (an epoch is ``n_cells / (set_size * n_sets)`` steps), at least
    ``min_steps`` and at most ``max_steps`` steps (``max_epochs=None``: ``max_steps``)
lr, patience, min_delta, val_fraction : validation sets are held-out perturbed cells of every
    training condition, generated from training controls (``val_controls="held_out"`` holds
    out controls too), scored by the error of the set's mean change (+ energy distance with
    ``val_energy``); training stops after ``patience`` validations without a relative
    improvement of ``min_delta`` (patience counts validations, one per 100 steps); the best
    weights are kept
base, inner_unit, inner_folds : residual on a baseline (``auto``, ``none`` or a baseline name,
    see :mod:`~perturbcast.models.set_residual`): sets start at the controls plus the base's
    predicted mean change and the network learns the correction; ``auto`` (default) chooses by
    inner cross-validation over training conditions (``none`` and ``blend``, the stacked
    baselines, are candidates; ``base_rule``: ``error``, the smallest inner error, or
    ``parity_score``, see :mod:`~perturbcast.models.base_rule`); ``shrink``
    (``auto``, default, or a number in [0, 1]) keeps that share of the learned mean correction
    (:mod:`~perturbcast.models.set_shrink`; ``auto``: up to 3 probe trainings on held-out
    training conditions, 1 among the candidates; ``auto_1se``: the smallest share within one
    standard error of the best; ``shrink_probes``: ``auto``, a number or ``all`` inner folds
    probed). ``base=none shrink=1`` is the network
    alone, one training
n_seeds : ensemble members (seeds seed..seed+n_seeds-1); predictions average the members'
    mean changes, and their spread per condition is written to ``uns["perturbcast"]["spread"]``
embeddings : "default" (the built-in human gene table; "train" with a warning when it has no row
    for any training perturbation), "train" (gene features from training data), "none", or a
    table path (csv/parquet/npz); several comma-separated are joined side by side (see
    :func:`~perturbcast.models.perturbation_features.resolve_embeddings`)
dose_key : obs column with a dose per cell (scalar input), or None
devices, num_nodes, strategy, precision : passed to ``lightning.Trainer`` (multi-GPU / multi-node;
    under DDP each step's ``n_sets`` sets are split evenly over the ranks, so a run on k
    processes takes the same optimiser steps as one process with the same global batch);
    ``strategy="fsdp"`` needs CUDA (Lightning refuses FSDP on CPU: a one-line error)
memory_budget_gb : (AnnData input, or ``sampler="rows"``) load the training cells densely when
    they fit in this many GB, else read each batch's cells from disk (announced with a warning)
sampler, num_workers : "auto" (default): on a store-backed Experiment, training sets are runs of
    the store drawn by :class:`~perturbcast.data.store_sampler.StoreSetSampler` (see
    :mod:`~perturbcast.models.store_set_batches`; nothing is loaded whole, ``num_workers``
    DataLoader workers read them), else the in-memory sampler over the training rows; "rows"
    forces the latter on a store too, "store" requires a store
learned_dropout, context_dropout : see :class:`~perturbcast.modules.PerturbationEncoder`;
    context/batch labels are dropped with this probability so "unknown" is learned too
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import torch
from torch import Tensor

from ..data.experiment import Experiment
from ..errors import InputError
from ..modules.losses import energy_loss
from ..modules.set_net import ConditionalSetNet
from ..train.distributed import check_strategy
from ..train.lightning import train_network
from ..utils import seed_everything
from .base import PerturbationModel
from .fallback import BaseFallback
from .param_types import check_loose_kinds
from .perturbation_features import PerturbationFeatures
from .set_data import prepare, training_budget
from .set_ensemble import combine_members, member_resume
from .set_model_state import SetModelState
from .set_prediction import feature_names, prediction_dose, prediction_sets
from .set_shrink import shrink_change
from .store_set_batches import StoreSetBatches, training_batches

DEFAULTS: dict[str, Any] = dict(
    space="pca", n_latent=64, set_size=64, n_sets=16, dim=128, depth=4, n_heads=4,
    max_epochs=150, min_steps=200, max_steps=1000, lr=1e-3, patience=3, min_delta=0.01,
    val_fraction=0.1, embeddings="default", dose_key=None, base="auto", base_rule="error",
    inner_unit="auto", inner_folds=5, shrink="auto", shrink_probes="auto", n_seeds=1,
    learned_dropout=0.5, context_dropout=0.2,
    checkpoint_dir=None, show_progress=False, val_energy=False, val_controls="train",
    memory_budget_gb=4.0, devices=1, num_nodes=1, strategy="auto", precision="auto",
    sampler="auto", num_workers=0,
)
CHOICES: dict[str, tuple] = {"space": ("pca", "genes"), "solver": ("euler", "midpoint", "rk4"),
                             "val_controls": ("train", "held_out"),
                             "strategy": ("auto", "ddp", "fsdp", "ddp_spawn"),
                             "precision": ("auto", "32", "32-true", "bf16-mixed", "16-mixed"),
                             "sampler": ("auto", "store", "rows"),
                             "inner_unit": ("auto", "combo", "perturbation", "condition")}
N_VAL_BATCHES = 4
COND_KEYS = ("learned_idx", "features", "has_features", "dose", "context", "batch")


class SetModel(SetModelState, BaseFallback, PerturbationModel):
    """Shared machinery; see the module docstring for the parameters."""

    name: ClassVar[str] = "set_model"
    takes_embeddings: ClassVar[bool] = True
    use_time: ClassVar[bool] = False
    extra_defaults: ClassVar[dict[str, Any]] = {}
    loose_params: ClassVar[tuple[str, ...]] = ("max_epochs", "shrink", "devices")

    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        return {**DEFAULTS, **cls.extra_defaults}

    @classmethod
    def check_loose(cls, params: dict[str, Any]) -> dict[str, Any]:
        return check_loose_kinds(cls.name, params)

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
        self._init_fallback()
        self.params = self.check_loose(self.params)
        self.net: ConditionalSetNet | None = None
        self.members: list[ConditionalSetNet] = []
        self.training_summary: dict[str, Any] = {}
        self._spread: dict[str, float] = {}

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
        real_change = batch["x1"].mean(1) - (batch["x0"].mean(1) - batch["base"])
        err = (gen.mean(1) - batch["x1"].mean(1)).pow(2).sum(-1).mean()
        loss = err / real_change.pow(2).sum(-1).mean().clamp_min(1e-8)
        if self.params["val_energy"]:
            loss = loss + energy_loss(gen, batch["x1"])
        return loss

    # ---- fitting -----------------------------------------------------------------------------
    def check_can_predict(self, exp: Experiment, perturbations, train_mask=None) -> None:
        """Raise before training if a perturbation to predict would have neither a learned
        embedding (seen in training) nor a feature row (see
        :func:`~perturbcast.models.set_prediction.feature_names`)."""
        mask = np.ones(exp.n_cells, bool) if train_mask is None else np.asarray(train_mask, bool)
        learned = sorted({c for p in set(exp.perturbations[mask]) for c in exp.components(p)})
        names = feature_names(exp, self.params["embeddings"], learned, self.name)
        PerturbationFeatures(learned, names, np.zeros((len(names), 0), np.float32),
                             exp.separator, exp.control).check(list(perturbations))

    def _fit(self, exp: Experiment, mask: np.ndarray) -> None:
        p = self.params
        check_strategy(p["strategy"])  # before any work
        seed_everything(self.seed)
        rng = np.random.default_rng(self.seed)
        data = prepare(exp, mask, p, self.seed, rng, self.name)
        self.latent, self.features, self.doses = data.latent, data.features, data.doses
        self.embeddings_used = data.embeddings_used
        self.context_names, self.batch_names = data.context_names, data.batch_names
        oof, base_summary = self._fit_base(exp, mask, data.cond_keys)
        data.enc["base"] = self.latent.encode_change(oof)
        sets = training_batches(data, p, self.arrange, rng, self.seed, self.name)
        val_batches = sets.validation_batches(N_VAL_BATCHES, self.seed + 1)
        config, budget = training_budget(p, sets.n_train_perturbed)
        if not val_batches:
            warnings.warn(f"{self.name}: no validation cells (val_fraction={p['val_fraction']}, "
                          f"groups too small to hold any out), so no early stopping: training "
                          f"runs all {config.max_steps} steps and keeps the last weights.",
                          stacklevel=3)
        meta = {"model": self.name, "params": self.params, "genes": self.genes.tolist(),
                "vocabulary": self.vocabulary, "contexts": self.contexts}
        self.members, runs = [], []
        for m in range(p["n_seeds"]):
            seed_everything(self.seed + m)
            r = rng if m == 0 else np.random.default_rng(self.seed + m)
            net = self._new_net(self.latent.dim)
            if self.base_model is not None:  # zero correction: the prediction is the base's
                torch.nn.init.zeros_(net.shift.weight)
            if config.max_steps > 0:
                if p["checkpoint_dir"] and p["n_seeds"] > 1:
                    config.checkpoint_dir = str(Path(p["checkpoint_dir"]) / f"member{m}")
                with member_resume(m):
                    store = isinstance(sets, StoreSetBatches)
                    runs.append(train_network(
                        net, self.loss, None if store else (lambda r=r: sets.train_batch(r)),
                        val_batches, config, meta, self.validation_loss, sampler_rng=r,
                        dataset=sets.dataset(self.seed + m) if store else None,
                        num_workers=int(p["num_workers"])))
            else:
                runs.append({"steps": 0, "epochs": 0, "stopped_early": False})
            self.members.append(net.cpu().eval())
        self.net = self.members[0]
        shrink = self._fit_shrink(exp, mask, data.cond_keys)
        self.training_summary = {**runs[0], **budget, **base_summary, **shrink,
                                 "n_seeds": p["n_seeds"],
                                 "member_steps": [r["steps"] for r in runs],
                                 "data_mode": data.rows.mode, "sampler": sets.kind}

    def _new_net(self, n_in: int) -> ConditionalSetNet:
        p = self.params
        return ConditionalSetNet(n_in, p["dim"], p["depth"], p["n_heads"],
                                 len(self.features.learned), self.features.n_features,
                                 len(self.context_names), len(self.batch_names), self.use_time,
                                 p["learned_dropout"])

    # ---- prediction ----------------------------------------------------------------------------
    def predict(self, *args: Any, **kwargs: Any) -> ad.AnnData:
        """See :meth:`PerturbationModel.predict`; ``uns["perturbcast"]["spread"]`` holds, per
        ``"perturbation|context"``, the spread of the ensemble members' predicted mean change
        (root mean over genes of its variance across members; 0 with one member)."""
        self._spread = {}
        out = super().predict(*args, **kwargs)
        out.uns["perturbcast"]["spread"] = dict(self._spread)
        return out

    def prediction_spread(self) -> dict[str, float]:
        """The members' spread per ``"perturbation|context"`` of the last :meth:`predict`."""
        return dict(self._spread)

    def _predict_cells(self, x_ctrl, perturbation, context, exp, ctrl_pool, ctrl_idx=None):
        dose = prediction_dose(exp, self.params["dose_key"], perturbation, context, self.doses,
                               self.name)
        enc = self.features.encode([perturbation], [dose])  # raises for an unknown perturbation
        n = x_ctrl.shape[0]
        if n == 0:
            return x_ctrl.copy()
        sets, set_batch = prediction_sets(exp, ctrl_idx, n, self.params["set_size"],
                                          self.batch_names, self._batch_id, self.name)
        z = self.latent.encode(x_ctrl)
        base = None if self.base_model is None else self.base_model.delta(perturbation, context)
        if base is not None:
            z = z + self.latent.encode_change(base[None, :])
        x0 = np.zeros((len(sets), max(s.size for s in sets), z.shape[1]), np.float32)
        mask = np.zeros(x0.shape[:2], bool)
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
        changes = []  # per member: each cell's latent change from its (shifted) start
        for net in self.members:
            torch.manual_seed(self.seed)
            with torch.no_grad():
                z1 = self.generate(net.eval(), torch.from_numpy(x0), cond,
                                   torch.from_numpy(mask)).numpy()
            out = np.empty_like(z)
            for i, s in enumerate(sets):
                out[s] = z1[i, :s.size]
            changes.append(out - z)
        changes = [shrink_change(c, self.shrink) for c in changes]  # the spread shrinks too
        change, self._spread[f"{perturbation}|{context}"] = combine_members(changes,
                                                                             self.latent)
        pred = x_ctrl + self.latent.decode_change(change)
        return pred if base is None else pred + base[None, :].astype(np.float32)

    def _batch_id(self, name) -> int:
        """1-based id of a training batch; 0 ('unknown') for None or an unseen batch."""
        if name is None or str(name) not in self.batch_names:
            return 0
        return self.batch_names.index(str(name)) + 1
