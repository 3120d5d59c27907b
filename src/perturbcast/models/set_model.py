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
learned_dropout, context_dropout : see :class:`~perturbcast.modules.PerturbationEncoder`;
    context/batch labels are dropped with this probability so "unknown" is learned too
"""

from __future__ import annotations

import json
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
from ..train.lightning import TrainConfig, train_network
from ..utils import seed_everything
from .base import PerturbationModel
from .latent import LatentSpace
from .perturbation_features import (
    PerturbationFeatures,
    resolve_embeddings,
    training_gene_features,
)

DEFAULTS: dict[str, Any] = dict(
    space="pca", n_latent=64, set_size=64, n_sets=16, dim=128, depth=4, n_heads=4,
    max_steps=1000, lr=1e-3, patience=5, val_fraction=0.1, embeddings="default", dose_key=None,
    learned_dropout=0.5, context_dropout=0.2, checkpoint_dir=None, show_progress=False,
    val_energy=False, val_controls="train",
)
CHOICES: dict[str, tuple] = {"space": ("pca", "genes"), "solver": ("euler", "midpoint", "rk4"),
                             "val_controls": ("train", "held_out")}
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
    def _fit(self, exp: Experiment, mask: np.ndarray) -> None:
        p = self.params
        seed_everything(self.seed)
        rng = np.random.default_rng(self.seed)
        idx = np.flatnonzero(mask)
        x = exp.rows(idx)
        perts = exp.perturbations[idx].astype(str)
        ctxs = exp.contexts[idx].astype(str)
        batches = exp.batches[idx].astype(str) if exp.batches is not None else None
        is_ctrl = perts == exp.control
        self.latent = LatentSpace(p["space"], p["n_latent"]).fit(x, rng)
        z = self.latent.encode(x)

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
        z_t = torch.from_numpy(z)
        enc_t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in enc.items()}

        def make(smp: SetSampler, keep: np.ndarray, r: np.random.Generator, drop: float):
            b = smp.sample(p["n_sets"], r)
            b.condition = keep[b.condition]
            return self._batch_tensors(b, z, z_t, enc_t, r, drop)

        self.net = self._new_net(z.shape[1])
        val_batches = []
        if val_keep.size and has_val_ctrl:
            val_sampler = sampler(val_cells, ctrl_val, val_keep)
            vr = np.random.default_rng(self.seed + 1)
            val_batches = [make(val_sampler, val_keep, vr, 0.0) for _ in range(N_VAL_BATCHES)]
        config = TrainConfig(max_steps=p["max_steps"], lr=p["lr"], patience=p["patience"],
                             checkpoint_dir=p["checkpoint_dir"], show_progress=p["show_progress"],
                             warmup_steps=min(100, max(1, p["max_steps"] // 10)),
                             steps_per_epoch=min(100, p["max_steps"]))
        meta = {"model": self.name, "params": self.params, "genes": self.genes.tolist(),
                "vocabulary": self.vocabulary, "contexts": self.contexts}
        self.training_summary = train_network(
            self.net, self.loss, lambda: make(train_sampler, all_conds, rng,
                                              p["context_dropout"]), val_batches, config, meta,
            self.validation_loss, sampler_rng=rng)

    def _batch_tensors(self, b: SetBatch, z: np.ndarray, z_t: Tensor, enc: dict[str, Tensor],
                       rng: np.random.Generator, drop: float) -> dict[str, Tensor]:
        order = self.arrange(z[b.ctrl], z[b.pert])
        pert = np.take_along_axis(b.pert, order, axis=1)
        cond = torch.from_numpy(b.condition)
        out = {k: v[cond] for k, v in enc.items()}
        batch = torch.from_numpy(np.maximum(b.batch, 0))
        if drop > 0:
            out["context"] = out["context"] * torch.from_numpy(rng.random(len(cond)) >= drop)
            batch = batch * torch.from_numpy(rng.random(len(cond)) >= drop)
        out["batch"] = batch
        out["x0"] = z_t[torch.from_numpy(b.ctrl)]
        out["x1"] = z_t[torch.from_numpy(pert)]
        return out

    def _training_doses(self, exp: Experiment, idx: np.ndarray, perts: np.ndarray):
        key = self.params["dose_key"]
        if key is None:
            return {}
        dose = pd.to_numeric(exp.adata.obs[key].to_numpy()[idx], errors="coerce")
        return pd.Series(dose).groupby(perts).median().fillna(0.0).to_dict()

    def _build_features(self, exp, x, perts, ctxs, is_ctrl, cond_keys, cond_cells):
        learned = sorted({c for k in cond_keys for c in exp.components(k[0])})

        def train_table() -> tuple[np.ndarray, np.ndarray]:
            ctrl_mean = {c: x[is_ctrl & (ctxs == c)].mean(0) for c in np.unique(ctxs[is_ctrl])}
            glob = x[is_ctrl].mean(0)
            deltas = np.stack([x[cells].mean(0) - ctrl_mean.get(k[1], glob)
                               for k, cells in zip(cond_keys, cond_cells, strict=True)])
            ctrl = np.flatnonzero(is_ctrl)
            ctrl = ctrl[np.random.default_rng(self.seed).permutation(ctrl.size)[:5000]]
            names = exp.genes.astype(str)
            return names, training_gene_features(names, deltas, x[ctrl])

        names, vecs, _ = resolve_embeddings(self.params["embeddings"], learned, train_table,
                                            self.name)
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
                d = pd.to_numeric(exp.adata.obs[key].to_numpy()[sel], errors="coerce")
                if np.isfinite(d).any():
                    return float(np.nanmedian(d))
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
