"""``blend``: the other baselines' predicted mean changes, weighted by how well each predicted
held-out training conditions (stacked regression, Wolpert 1992; Breiman 1996).

delta(p, c) = sum_k w_k delta_k(p, c) over the member baselines k (default: cell_mean,
context_mean, perturbation_mean, additive, linear, knn), with w_k >= 0 and no sum constraint
(the weights can shrink every member toward no change). The weights minimise the squared error
of the members' *out-of-fold* deltas against the real deltas of the training conditions: each
held-out condition's member deltas come from members fitted without its inner fold, so a member
that merely memorises the training conditions gets no credit. The inner folds are those of the
set models' ``base=auto`` (:mod:`~perturbcast.models.set_residual`: combinations, whole
perturbations or single conditions, whichever the training data's shape calls for), pooled over
:data:`~perturbcast.models.set_residual.BASE_REPEATS` random assignments; the members are then
fitted on every training cell. Only training cells are read.

Why: picking one baseline on inner folds (``base=auto``) is a noisy choice when a few dozen
conditions separate the candidates, and baselines err in different directions (a mean is biased
but stable, a gene-table model less biased but noisier), so a weighted blend can be closer than
the best of them. A single training perturbation cannot be held out: the blend then announces
that it is cell_mean.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
from scipy.optimize import nnls

from ..data.experiment import Experiment
from ..errors import InputError
from .baselines import MeanShiftModel

_MEMBER_KEY = re.compile(r"^m\d+\.")
MEMBERS = ("cell_mean", "context_mean", "perturbation_mean", "additive", "linear", "knn")


def blend_weights(member_deltas: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Non-negative weights of the members that best reproduce ``real``.

    Parameters
    ----------
    member_deltas : array, shape (n_members, n_conditions, n_genes); out-of-fold deltas
    real : array, shape (n_conditions, n_genes); the conditions' real deltas

    Returns
    -------
    w : array, shape (n_members,), w >= 0, minimising ||sum_k w_k member_deltas[k] - real||^2
    """
    a = member_deltas.reshape(len(member_deltas), -1).astype(np.float64)
    gram, rhs = a @ a.T, a @ real.reshape(-1).astype(np.float64)
    # the same least squares in K dimensions: ||L'w - L^-1 b||^2 = w'Gw - 2b'w + const
    jitter = 1e-10 * max(float(np.trace(gram)) / max(len(gram), 1), 1e-300)
    chol = np.linalg.cholesky(gram + jitter * np.eye(len(gram)))
    w, _ = nnls(chol.T, np.linalg.solve(chol, rhs))
    return w


def cross_fitted_blend(member_deltas: np.ndarray, real: np.ndarray,
                       folds: np.ndarray) -> np.ndarray:
    """The blend's out-of-fold deltas, shape (n_conditions, n_genes): each inner fold's
    conditions are blended with weights fitted on the other folds' conditions (those not held
    out, fold -1, with weights from every held-out condition).

    Parameters
    ----------
    member_deltas : array, shape (n_members, n_conditions, n_genes); out-of-fold deltas of
        each member under the assignment ``folds``
    real : array, shape (n_conditions, n_genes)
    folds : array, shape (n_conditions,); inner fold id, -1 where not held out
    """
    out = np.zeros(real.shape)
    held = folds >= 0
    for f in np.unique(folds):
        rows = folds == f
        train = held & ~rows if f >= 0 else held
        if not train.any():  # a single inner fold: nothing else to learn the weights from
            train = held
        w = blend_weights(member_deltas[:, train], real[train])
        out[rows] = np.tensordot(w, member_deltas[:, rows], axes=1)
    return out


class BlendBaseline(MeanShiftModel):
    """Non-negative weighted sum of the member baselines' mean changes, weights from inner
    folds of the training conditions (see the module docstring).

    Parameters
    ----------
    members : names of baselines with a predicted mean change (default :data:`MEMBERS`)
    inner_unit, inner_folds : as for the set models' ``base=auto``
    embeddings, n_components : passed to the members that take a gene table (linear, knn)
    """

    name = "blend"
    takes_embeddings = True

    def __init__(self, seed: int = 0, members: tuple[str, ...] | list[str] = MEMBERS,
                 inner_unit: str = "auto", inner_folds: int = 5, embeddings: str = "default",
                 n_components: int = 10, **params: Any) -> None:
        from .set_residual import base_names

        members = [str(m) for m in ([members] if isinstance(members, str) else members)]
        allowed = [n for n in base_names() if n != self.name]
        bad = [m for m in members if m not in allowed]
        if bad or not members:
            raise InputError(f"blend: members={members!r} must be baselines with a predicted "
                             f"mean change: {', '.join(allowed)}.")
        super().__init__(seed=seed, members=members, inner_unit=inner_unit,
                         inner_folds=int(inner_folds), embeddings=embeddings,
                         n_components=n_components, **params)
        self.member_models: list[MeanShiftModel] = []
        self.weights = np.zeros(0)

    def _member(self, name: str) -> MeanShiftModel:
        from . import get_model_class

        cls = get_model_class(name)
        extra = {k: self.params[k] for k in ("embeddings", "n_components")
                 if getattr(cls, "takes_embeddings", False)}
        return cls(seed=self.seed, **extra)

    def _fit(self, exp: Experiment, mask: np.ndarray) -> None:
        from .set_residual import (
            BASE_REPEATS,
            _MeansOnly,
            inner_folds,
            inner_unit,
            out_of_fold_deltas,
            real_deltas,
        )

        super()._fit(exp, mask)
        names = self.params["members"]
        self.member_models = [self._member(n).fit(exp, mask) for n in names]
        cond_keys = list(zip(self.cond_pert.tolist(), self.cond_ctx.tolist(), strict=True))
        unit = inner_unit(cond_keys, self.params["inner_unit"], exp.components)
        assignments = [inner_folds(cond_keys, unit, self.params["inner_folds"],
                                   self.seed + 7919 * r, exp.components)
                       for r in range(BASE_REPEATS)]
        if (assignments[0] < 0).all():
            warnings.warn("blend: fewer than two training conditions can be held out, so no "
                          "weights can be learned; blend is cell_mean here.", stacklevel=3)
            self.weights = np.array([1.0 * (n == "cell_mean") for n in names])
            if not self.weights.any():
                self.weights[0] = 1.0
            self.training_summary = {"blend_weights": self.describe_weights(), "inner_unit": unit}
            return
        means = _MeansOnly(exp, mask)
        real = real_deltas(means, mask, cond_keys)
        stacked, targets = [], []
        with warnings.catch_warnings():  # the members' own fits above already warned
            warnings.simplefilter("ignore")
            for folds in assignments:
                held = folds >= 0
                stacked.append(np.stack([
                    out_of_fold_deltas(n, means, mask, cond_keys, folds, self.seed,
                                       make=self._member)[held] for n in names]))
                targets.append(real[held])
        self.weights = blend_weights(np.concatenate(stacked, axis=1), np.concatenate(targets))
        self.training_summary = {"blend_weights": self.describe_weights(), "inner_unit": unit}

    def describe_weights(self) -> str:
        """The weights that round to at least 0.01, largest first, e.g.
        ``"knn:0.61 cell_mean:0.33"``."""
        order = np.argsort(-self.weights, kind="stable")
        return " ".join(f"{self.params['members'][i]}:{self.weights[i]:.2f}" for i in order
                        if self.weights[i] >= 0.005) or "none (no change)"

    def delta(self, pert: str, ctx: str) -> np.ndarray:
        out = np.zeros(self.ctrl_mean.shape[1])
        for w, model in zip(self.weights, self.member_models, strict=True):
            if w > 0:
                out += w * model.delta(pert, ctx)
        return out

    def predict(self, exp, conditions, n_cells=100, include_controls=False):
        """As :meth:`PerturbationModel.predict`; first warns, as linear/knn do, where a
        member with weight falls back for perturbations without a gene-table row."""
        from .base import _parse_conditions

        self._check_fitted()
        perts = sorted({p for p, _ in _parse_conditions(conditions, 1)[0]})
        for w, model in zip(self.weights, self.member_models, strict=True):
            can = getattr(model, "_can_use_vector", None)
            missing = [p for p in perts if can is not None and not can(p)]
            if w > 0 and missing:
                warnings.warn(f"blend: member {model.name} (weight {w:.2f}) has no gene-table "
                              f"row for {len(missing)} of {len(perts)} perturbations; it "
                              "predicts those with its fallback.", stacklevel=2)
        return super().predict(exp, conditions, n_cells, include_controls)

    def _state(self) -> dict[str, np.ndarray]:
        state = {**super()._state(), "weights": self.weights}
        for i, model in enumerate(self.member_models):
            state.update({f"m{i}.{k}": v for k, v in model._state().items()})
        return state

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        own = {k: v for k, v in state.items() if not _MEMBER_KEY.match(k)}
        super()._set_state(own)
        self.member_models = []
        for i, name in enumerate(self.params["members"]):
            model = self._member(name)
            model.genes, model.keys = self.genes, self.keys
            model.vocabulary, model.contexts = self.vocabulary, self.contexts
            prefix = f"m{i}."
            model._set_state({k[len(prefix):]: v for k, v in state.items()
                              if k.startswith(prefix)})
            self.member_models.append(model)
