"""Strong simple baselines. Deep models must beat these to matter.

All are fitted from pseudobulk means of the training cells: per context, the control mean and
each training condition's delta (condition mean - control mean), in log1p space.
"""

from __future__ import annotations

import numpy as np

from ..data.experiment import Experiment
from .base import PerturbationModel


class MeanShiftModel(PerturbationModel):
    """Shared machinery: predicted cells = sampled control cells + a delta vector."""

    def _fit(self, exp: Experiment, mask: np.ndarray) -> None:
        keys, means = exp.group_means(("perturbation", "context"), mask)
        is_ctrl = (keys.perturbation == exp.control).to_numpy()
        self.ctrl_ctx = keys.context[is_ctrl].to_numpy().astype(str)
        self.ctrl_mean = means[is_ctrl]
        cond = keys[~is_ctrl]
        self.cond_pert = cond.perturbation.to_numpy().astype(str)
        self.cond_ctx = cond.context.to_numpy().astype(str)
        self.cond_n = cond.n_cells.to_numpy()
        self.cond_mean = means[~is_ctrl]
        ctrl_of = {c: m for c, m in zip(self.ctrl_ctx, self.ctrl_mean, strict=True)}
        base = np.stack([ctrl_of.get(c, self.ctrl_mean.mean(0)) for c in self.cond_ctx]) \
            if len(cond) else np.zeros((0, exp.n_genes))
        self.cond_delta = self.cond_mean - base
        self._fit_extra(exp)

    def _fit_extra(self, exp: Experiment) -> None:
        return None

    def _state(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in ("ctrl_ctx", "ctrl_mean", "cond_pert", "cond_ctx",
                                              "cond_n", "cond_mean", "cond_delta")}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        for k, v in state.items():
            setattr(self, k, v.astype(str) if v.dtype.kind in "OU" else v)

    # ---- deltas ------------------------------------------------------------------------------
    def delta_in(self, pert: str, ctx: str) -> np.ndarray | None:
        hit = np.flatnonzero((self.cond_pert == pert) & (self.cond_ctx == ctx))
        return self.cond_delta[hit[0]] if hit.size else None

    def perturbation_delta(self, pert: str, exclude_context: str | None = None):
        """Mean training delta of ``pert`` over contexts (other than ``exclude_context``)."""
        sel = self.cond_pert == pert
        if exclude_context is not None and (sel & (self.cond_ctx != exclude_context)).any():
            sel &= self.cond_ctx != exclude_context
        return self.cond_delta[sel].mean(0) if sel.any() else None

    def context_delta(self, ctx: str) -> np.ndarray:
        """Mean training delta over the perturbations of ``ctx`` (all contexts if none)."""
        sel = self.cond_ctx == ctx
        if not sel.any():
            sel = np.ones(self.cond_ctx.size, bool)
        if not sel.any():
            return np.zeros(self.ctrl_mean.shape[1])
        return self.cond_delta[sel].mean(0)

    def single_delta(self, pert: str, ctx: str) -> np.ndarray:
        """Delta of a single: same context, else other contexts, else the context mean."""
        for d in (self.delta_in(pert, ctx), self.perturbation_delta(pert)):
            if d is not None:
                return d
        return self.context_delta(ctx)

    def delta(self, pert: str, ctx: str) -> np.ndarray:
        raise NotImplementedError

    def _predict_cells(self, x_ctrl, perturbation, context, exp, ctrl_pool, ctrl_idx=None):
        return x_ctrl + self.delta(perturbation, context)[None, :].astype(np.float32)


class ControlBaseline(MeanShiftModel):
    """Identity: the perturbation changes nothing (predicted cells = control cells)."""

    name = "control"

    def delta(self, pert, ctx):
        return np.zeros(self.ctrl_mean.shape[1])


class CellMeanBaseline(MeanShiftModel):
    """VCC baseline: every predicted cell is the mean of the training perturbed cells.

    In a context with no training perturbed cells, the context's control mean plus the mean
    (perturbed - control) shift of the other contexts.
    """

    name = "cell_mean"

    def delta(self, pert, ctx):
        """The mean change its cells carry, as a base for set models: the cell-weighted mean
        training delta of ``ctx`` (of all contexts if it has none)."""
        sel = self.cond_ctx == ctx
        sel = sel if sel.any() else np.ones(self.cond_ctx.size, bool)
        if not sel.any():
            return np.zeros(self.ctrl_mean.shape[1])
        w = self.cond_n[sel].astype(float)
        return (self.cond_delta[sel] * w[:, None]).sum(0) / w.sum()

    def _predict_cells(self, x_ctrl, perturbation, context, exp, ctrl_pool, ctrl_idx=None):
        sel = self.cond_ctx == context
        if sel.any():
            w = self.cond_n[sel].astype(float)
            row = (self.cond_mean[sel] * w[:, None]).sum(0) / w.sum()
        else:
            ctrl = exp.rows(ctrl_pool)[:, self._gene_index(exp)].mean(0)
            w = self.cond_n.astype(float)
            row = ctrl + (self.cond_delta * w[:, None]).sum(0) / max(w.sum(), 1.0)
        return np.broadcast_to(row.astype(np.float32), x_ctrl.shape).copy()


class ContextMeanBaseline(MeanShiftModel):
    """Controls + the mean delta of all training perturbations in the same context."""

    name = "context_mean"

    def delta(self, pert, ctx):
        return self.context_delta(ctx)


class PerturbationMeanBaseline(MeanShiftModel):
    """Controls + the perturbation's mean delta in the other (training) contexts.

    Unseen perturbations fall back to the context mean delta.
    """

    name = "perturbation_mean"

    def delta(self, pert, ctx):
        d = self.perturbation_delta(pert, exclude_context=ctx)
        return d if d is not None else self.context_delta(ctx)


class AdditiveBaseline(MeanShiftModel):
    """Controls + the sum of the single perturbations' deltas (combos); singles as themselves."""

    name = "additive"

    def delta(self, pert, ctx):
        sep, ctrl = self.keys["separator"], self.keys["control"]
        parts = [p for p in pert.split(sep) if p and p != ctrl]
        if len(parts) <= 1:
            return self.single_delta(pert, ctx)
        return np.sum([self.single_delta(p, ctx) for p in parts], axis=0)
