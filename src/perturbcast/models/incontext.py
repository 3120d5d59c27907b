"""The in-context tabular model (``incontext``, STACK-like): predicts from example cells.

``fit`` pretrains :class:`~perturbcast.modules.tabular.TabularSetNet` self-supervised (sets
from one (context, batch, perturbation) group, one gene subset of 10-80% hidden across the
whole set and reconstructed; the loss counts hidden entries only), then fine-tunes it in
context: a set is [prompt | query] — prompt = perturbed cells of P shown elsewhere (see
:mod:`.incontext_sets` for the rule) and their controls, query = control cells of the target
context — and the query rows are trained to become the real perturbed cells of P in that
context (energy distance + ``mean_weight`` x squared error of the set means). Prediction needs
no weight update: any perturbation, even one never trained on, is predicted from prompt cells.

Parameters (all saved with the model)
-------------------------------------
n_modules, dim, depth, n_heads : network shape (paper size: 100, 16, 9, 4)
cross : "module" (attention over cells per module token) or "flat" (over cell vectors)
head : "gaussian" (log1p) or "nb" (negative binomial on the 1e4-normalised scale)
prompt_summary, change_skip : the prompt's mean change enters the query rows' tokens / is
    added to their output with a learned per-gene gain (see
    :class:`~perturbcast.modules.tabular.TabularSetNet`)
set_size : pretraining set size and query cells per set; n_prompt : perturbed prompt cells
    (and as many prompt controls); n_sets : sets per step
pretrain_steps, finetune_steps, lr, mask_min, mask_max, mean_weight : training
val_fraction, val_every, patience, min_delta : validation and early stopping (see
    :mod:`.incontext_fit`): ``val_fraction`` of the cells of every (context, batch,
    perturbation) group is held out of training (0: none, every phase runs all its steps);
    every ``val_every`` steps each phase is scored on sets of them (pretraining: its loss;
    fine-tuning: the relative error of the mean change), and a phase stops
    after ``patience`` validations without a relative improvement of ``min_delta`` (the best
    weights are kept). Default 0.1: on the simulator (``bench_incontext_validation.py``) as
    accurate as no validation at the default budget, where it rarely stops; with 4x the
    budget it stopped after 950-1200 of 2000 steps, more accurate than the default budget
bank_cells, bank_controls : training cells kept per condition / per context as the default
    prompt source (saved with the model)
base, base_rule, shrink, shrink_probes, inner_unit, inner_folds : fall back toward a
    baseline's mean change (see :mod:`~perturbcast.models.fallback`; the network never sees
    the base, so with the default ``shrink=1`` the base changes nothing); ``base=auto
    shrink=auto`` chooses both on inner folds of the training conditions (up to 3 extra
    trainings; ``shrink_probes=all``: one per inner fold)
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..data.experiment import Experiment
from ..errors import InputError, preview
from ..modules.losses import energy_loss
from ..modules.tabular import (
    TabularSetNet,
    masked_reconstruction_loss,
    nb_log_likelihood,
    prompt_mask,
)
from ..modules.tabular_cache import encode_prompt, predict_queries
from ..utils import json_text, seed_everything
from .base import Condition, PerturbationModel
from .fallback import BaseFallback
from .incontext_fit import fit_phases
from .incontext_io import bank_state, experiment_like, prompt_source
from .incontext_sets import PromptSource, StoreRows, roles
from .training_rows import is_store_backed

DEFAULTS: dict[str, Any] = dict(
    n_modules=32, dim=16, depth=4, n_heads=4, cross="module", head="gaussian", prompt_summary=True,
    change_skip=True, set_size=64,
    n_prompt=32, n_sets=8, pretrain_steps=200, finetune_steps=300, lr=1e-3, mask_min=0.1,
    mask_max=0.8, mean_weight=1.0, bank_cells=64, bank_controls=128, show_progress=False,
    val_fraction=0.1, val_every=50, patience=3, min_delta=0.01, base="none", base_rule="error",
    shrink=1.0, shrink_probes="auto", inner_unit="auto", inner_folds=5,
)
CHOICES = {"cross": ("module", "flat"), "head": ("gaussian", "nb"),
           "inner_unit": ("auto", "combo", "perturbation", "condition")}
SETS_PER_CALL = 32  # query sets per forward pass in prediction (memory bound)
NB_SCALE = 1e4  # counts scale of log1p(total 1e4) data
NORMALISATION = "log1p(counts / total * 1e4); raw counts are normalised on reading"


class InContextModel(BaseFallback, PerturbationModel):
    """See the module docstring."""

    name: ClassVar[str] = "incontext"

    def __init__(self, seed: int = 0, **params: Any) -> None:
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise InputError(f"unknown parameter(s) for incontext: {sorted(unknown)}; "
                             f"known: {', '.join(sorted(DEFAULTS))}.")
        super().__init__(seed=seed, **{**DEFAULTS, **params})
        for key, allowed in CHOICES.items():
            if self.params[key] not in allowed:
                raise InputError(f"incontext: {key}={self.params[key]!r} is not one of "
                                 f"{', '.join(allowed)}.")
        if not 0 <= float(self.params["val_fraction"]) < 1:
            raise InputError(f"incontext: val_fraction={self.params['val_fraction']!r} is not in "
                             "[0, 1); use e.g. 0.1 (0: no validation).")
        self._init_fallback()
        self.net: TabularSetNet | None = None
        self.bank: dict[str, np.ndarray] = {}
        self.training_summary: dict[str, Any] = {}

    loose_params: ClassVar[tuple[str, ...]] = ("shrink",)

    @classmethod
    def param_defaults(cls) -> dict[str, Any]:
        return dict(DEFAULTS)

    def check_can_predict(self, exp: Experiment, perturbations: Iterable[str],
                          train_mask: np.ndarray | None = None) -> None:
        """Raise before training when a perturbation would have no prompt among the training
        cells (the default prompt source): neither its own cells nor, for a combination, cells
        of one of its singles."""
        mask = np.ones(exp.n_cells, bool) if train_mask is None else np.asarray(train_mask, bool)
        seen = set(exp.perturbations[mask]) - {exp.control}
        bad = sorted(p for p in set(perturbations) if p not in seen and not (
            len(exp.components(p)) > 1 and seen & set(exp.components(p))))
        if bad:
            raise InputError(f"incontext: no prompt cells for {preview(bad, 5)} among the "
                             "training cells (the default prompt); it predicts from example "
                             "cells of the same perturbation in other contexts (or of a "
                             "combination's singles): pass prompt= cells, or use a split where "
                             "they appear in training in other contexts.")

    # ---- network ---------------------------------------------------------------------------
    def _new_net(self, n_genes: int) -> TabularSetNet:
        p = self.params
        return TabularSetNet(n_genes, p["n_modules"], p["dim"], p["depth"], p["n_heads"],
                             p["cross"], p["head"], bool(p["prompt_summary"]),
                             bool(p["change_skip"]))

    def _log1p(self, out: Tensor) -> Tensor:
        """Network output -> log1p expression."""
        return out if self.params["head"] == "gaussian" else torch.log1p(out.exp() * NB_SCALE)

    def _run(self, net: TabularSetNet, x: Tensor, n_prompt: int) -> Tensor:
        """Query rows' predicted log1p profiles: x (n_sets, 2 * n_prompt + n_query, G)."""
        n = x.shape[1]
        role = torch.from_numpy(roles(n_prompt, n - 2 * n_prompt))
        mask = prompt_mask(2 * n_prompt, n - 2 * n_prompt, x.device)
        return self._log1p(net(x, role.to(x.device), mask=mask))[:, 2 * n_prompt:]

    # ---- losses ----------------------------------------------------------------------------
    def pretrain_loss(self, net: TabularSetNet, batch: dict[str, Tensor]) -> Tensor:
        x, hidden = batch["x"], batch["hidden"]
        out = net(x, hidden=hidden)
        if self.params["head"] == "gaussian":
            return masked_reconstruction_loss(out, x, hidden)
        ll = nb_log_likelihood(torch.expm1(x), out.exp() * NB_SCALE, net.log_theta)
        w = hidden[:, None, :].expand_as(x).to(x.dtype)
        return -(ll * w).sum() / w.sum().clamp_min(1.0)

    def finetune_loss(self, net: TabularSetNet, batch: dict[str, Tensor]) -> Tensor:
        pred = self._run(net, batch["x"], self.params["n_prompt"])
        real = batch["target"]
        mean_err = (pred.mean(1) - real.mean(1)).pow(2).sum(-1).mean()
        return energy_loss(pred, real) + self.params["mean_weight"] * mean_err

    def finetune_validation_loss(self, net: TabularSetNet, batch: dict[str, Tensor]) -> Tensor:
        """Squared error of the query sets' predicted mean change, relative to the real mean
        change (as the set models validate): closer to pearson_delta / mae than the energy
        distance, whose finite-sample floor makes relative improvements vanish."""
        n_prompt = self.params["n_prompt"]
        pred = self._run(net, batch["x"], n_prompt).mean(1)
        start, real = batch["x"][:, 2 * n_prompt:].mean(1), batch["target"].mean(1)
        err = (pred - real).pow(2).sum(-1).mean()
        return err / (real - start).pow(2).sum(-1).mean().clamp_min(1e-8)

    # ---- fitting ---------------------------------------------------------------------------
    def _fit(self, exp: Experiment, mask: np.ndarray) -> None:
        p = self.params
        seed_everything(self.seed)
        rng = np.random.default_rng(self.seed)
        idx = np.flatnonzero(mask)
        x = StoreRows(exp, idx) if is_store_backed(exp) else torch.from_numpy(exp.rows(idx))
        perts = exp.perturbations[idx].astype(str)
        ctxs = exp.contexts[idx].astype(str)
        batches = exp.batches[idx].astype(str) if exp.batches is not None else np.full(
            idx.size, "")
        self.net = self._new_net(x.shape[1])
        meta = {"model": self.name, "params": self.params, "genes": self.genes.tolist(),
                "vocabulary": self.vocabulary, "contexts": self.contexts}

        cond_keys = sorted({(a, b) for a, b in zip(perts, ctxs, strict=True) if a != exp.control})
        base_summary = self._fit_base(exp, mask, cond_keys)[1]
        summary = fit_phases(self, x, perts, ctxs, batches, exp.control, exp.components, rng,
                             meta)
        self.bank = bank_state(exp, idx, perts, ctxs, p["bank_cells"], p["bank_controls"], rng)
        self.training_summary = {**summary, **base_summary,
                                 **self._fit_shrink(exp, mask, cond_keys)}

    # ---- prediction ------------------------------------------------------------------------
    def predict(self, exp: Experiment, conditions: Iterable[Condition] | pd.DataFrame,
                n_cells: int | Mapping[Condition, int] = 100, include_controls: bool = False,
                prompt: Experiment | ad.AnnData | None = None,
                prompt_filter: dict[str, object] | None = None) -> ad.AnnData:
        """As :meth:`PerturbationModel.predict`, with the prompt source.

        Parameters
        ----------
        prompt : Experiment or AnnData (read with the model's keys) holding cells of each
            requested perturbation (and controls); default: the training cells kept with the
            model (the perturbation in other contexts)
        prompt_filter : obs column -> value (or list of values): keep only these prompt cells
        """
        self._check_fitted()
        source = prompt_source(self, prompt, prompt_filter)
        return super().predict(exp, conditions, n_cells, include_controls, prompt=source)

    def _predict_cells(self, x_ctrl: np.ndarray, perturbation: str, context: str,
                       exp: Experiment, ctrl_pool: np.ndarray, ctrl_idx: np.ndarray | None = None,
                       prompt: PromptSource | None = None) -> np.ndarray:
        source = prompt if prompt is not None else prompt_source(self, None, None)
        rng = np.random.default_rng([self.seed, zlib.crc32(f"{perturbation}|{context}".encode())])
        n_prompt = self.params["n_prompt"]
        rows = source.prompt(perturbation, context, n_prompt, rng)
        if x_ctrl.shape[0] == 0:
            return x_ctrl.copy()
        return self._keep_share(self._query_outputs(rows, x_ctrl), x_ctrl, perturbation, context)

    def _query_outputs(self, rows: np.ndarray, x_ctrl: np.ndarray,
                       cached: bool = True) -> np.ndarray:
        """Predicted log1p profiles of the control cells x_ctrl (n, G), in sets of at most
        ``set_size`` query cells, each set [prompt rows (2 * n_prompt, G) | its queries].

        ``cached``: the prompt is encoded once (:mod:`~perturbcast.modules.tabular_cache`) and
        sets of equal size run together; ``False``: every set runs whole, the reference."""
        n, n_prompt = x_ctrl.shape[0], self.params["n_prompt"]
        chunks = np.array_split(np.arange(n), int(np.ceil(n / self.params["set_size"])))
        out = np.empty_like(x_ctrl)
        net = self.net.eval()
        with torch.inference_mode():
            if not cached:
                for c in chunks:
                    x = torch.from_numpy(np.concatenate([rows, x_ctrl[c]]).astype(np.float32))
                    out[c] = self._run(net, x[None], n_prompt)[0].numpy()
                return out
            prompt = torch.from_numpy(np.asarray(rows, np.float32))[None]
            cache = encode_prompt(net, prompt, torch.from_numpy(roles(n_prompt, 0)))
            for size in sorted({c.size for c in chunks}):
                same = [c for c in chunks if c.size == size]
                for k in range(0, len(same), SETS_PER_CALL):
                    group = np.stack(same[k:k + SETS_PER_CALL])  # (sets, size)
                    x = torch.from_numpy(np.asarray(x_ctrl[group], np.float32))
                    out[group] = self._log1p(predict_queries(net, x, cache)).numpy()
        return out

    # ---- embeddings ------------------------------------------------------------------------
    def embed(self, data: Experiment | ad.AnnData, batch_cells: int | None = None) -> np.ndarray:
        """Cell embeddings, shape (n_cells, n_modules * dim): final cell vectors, each cell
        encoded in sets of ``set_size`` cells of its own context (no prompt, no mask)."""
        self._check_fitted()
        exp = experiment_like(self, data, need_labels=False)
        gene_idx = self._gene_index(exp)
        size = batch_cells or self.params["set_size"]
        rng = np.random.default_rng(self.seed)
        out = np.zeros((exp.n_cells, self.params["n_modules"] * self.params["dim"]), np.float32)
        with torch.no_grad():
            for ctx in exp.context_names():
                cells = rng.permutation(np.flatnonzero(exp.contexts == ctx))
                for c in np.array_split(cells, int(np.ceil(cells.size / size))):
                    x = torch.from_numpy(exp.rows(np.sort(c))[:, gene_idx])
                    out[np.sort(c)] = self.net.eval().encode(x[None])[0].numpy()
        return out

    # ---- saving ----------------------------------------------------------------------------
    def _state(self) -> dict[str, np.ndarray]:
        state = {f"bank.{k}": v for k, v in self.bank.items()}
        state["normalisation"] = np.asarray(NORMALISATION)  # what the network reads
        state.update(self._fallback_state())
        for k, v in self.net.state_dict().items():
            state[f"net.{k}"] = v.detach().cpu().numpy()
        return state

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        if str(state.get("normalisation", NORMALISATION)) != NORMALISATION:
            raise InputError("this incontext model was saved with another normalisation "
                             f"({state['normalisation']}); refit it with this version.")
        self.bank = {k[5:]: v for k, v in state.items() if k.startswith("bank.")}
        self._set_fallback_state(state)
        self.net = self._new_net(len(self.genes))
        self.net.load_state_dict({k[4:]: torch.from_numpy(v) for k, v in state.items()
                                  if k.startswith("net.")})
        self.net.eval()

    def _save_extra(self, directory: Path) -> None:
        (directory / "training.json").write_text(json_text(self.training_summary, indent=2))

    def _load_extra(self, directory: Path) -> None:
        f = directory / "training.json"
        self.training_summary = json.loads(f.read_text()) if f.exists() else {}
