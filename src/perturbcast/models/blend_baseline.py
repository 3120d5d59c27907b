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
the best of them. Where fewer than two training conditions can be held out, no weights can be
learned: the blend then announces that it is its first member (cell_mean by default).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from scipy.optimize import nnls

from ..data.experiment import Experiment
from ..data.labels import canonical_label
from ..errors import InputError, preview
from .base import Condition, _parse_conditions
from .baselines import MeanShiftModel

_MEMBER_KEY = re.compile(r"^m\d+\.")
SHOWN_WEIGHT = 0.005  # weights below this are not listed and not warned about
MEMBERS = ("cell_mean", "context_mean", "perturbation_mean", "additive", "linear", "knn")


def normal_equations(member_deltas: np.ndarray, real: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Gram matrix (n_members, n_members) and right-hand side (n_members,) of the least
    squares of ``real`` (n_conditions, n_genes) on ``member_deltas`` (n_members,
    n_conditions, n_genes); sums of them pool several sets of conditions."""
    a = member_deltas.reshape(len(member_deltas), -1).astype(np.float64)
    return a @ a.T, a @ real.reshape(-1).astype(np.float64)


def nnls_weights(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Non-negative w, shape (n_members,), minimising w'Gw - 2 rhs'w (see :func:`blend_weights`).

    Members that are identical on the conditions (||a_i - a_j||^2 = G_ii + G_jj - 2 G_ij at
    rounding level) cannot be told apart: the first of them gets their weight, the others 0.
    All-zero members get 0."""
    diag = np.diag(gram)
    w = np.zeros(len(gram))
    keep: list[int] = []
    for k in range(len(gram)):
        same = [j for j in keep if diag[k] + diag[j] - 2 * gram[k, j] <= 1e-12 * diag[k]]
        if diag[k] > 0 and not same:
            keep.append(k)
    if not keep:
        return w
    g, b = gram[np.ix_(keep, keep)], rhs[keep]
    # ||L'w - L^-1 b||^2 = w'Gw - 2b'w + const; the jitter (relative to each member's own
    # scale) only keeps near-collinear members solvable
    chol = np.linalg.cholesky(g + np.diag(1e-10 * np.diag(g)))
    w[keep], _ = nnls(chol.T, np.linalg.solve(chol, b))
    return w


def blend_weights(member_deltas: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Non-negative weights of the members that best reproduce ``real``.

    Members that are identical on these conditions (e.g. context_mean, perturbation_mean and
    additive when every held-out condition is an unseen single) cannot be told apart: the
    first of them (in ``member_deltas`` order) gets their weight, the others 0. All-zero
    members get 0.

    Parameters
    ----------
    member_deltas : array, shape (n_members, n_conditions, n_genes); out-of-fold deltas
    real : array, shape (n_conditions, n_genes); the conditions' real deltas

    Returns
    -------
    w : array, shape (n_members,), w >= 0, minimising ||sum_k w_k member_deltas[k] - real||^2
    """
    return nnls_weights(*normal_equations(member_deltas, real))


def cross_fitted_blend(member_deltas: np.ndarray, real: np.ndarray,
                       folds: np.ndarray) -> np.ndarray:
    """The blend's out-of-fold deltas: each inner fold's conditions are blended with weights
    fitted on the other folds' conditions (conditions not held out, fold -1, with weights from
    every held-out condition). The members' deltas used for another fold's weights come from
    members fitted with this fold's cells (not fully nested: on 6 simulated cases the
    blend's inner error moved by at most 3% against a fully nested blend, in both directions,
    and its rank among the baselines did not change).

    Parameters
    ----------
    member_deltas : array, shape (n_members, n_conditions, n_genes); out-of-fold deltas of
        each member under the assignment ``folds``
    real : array, shape (n_conditions, n_genes)
    folds : array, shape (n_conditions,); inner fold id, -1 where not held out

    Returns
    -------
    array, shape (n_conditions, n_genes)
    """
    held = folds >= 0
    if np.unique(folds[held]).size < 2:
        raise ValueError("cross_fitted_blend needs at least two inner folds; with one, a "
                         "fold's weights would be fitted on its own real deltas.")
    out = np.zeros(real.shape)
    for f in np.unique(folds):
        rows = folds == f
        train = held & ~rows
        w = blend_weights(member_deltas[:, train], real[train])
        out[rows] = np.tensordot(w, member_deltas[:, rows], axes=1)
    return out


class BlendBaseline(MeanShiftModel):
    """Non-negative weighted sum of the member baselines' mean changes, weights from inner
    folds of the training conditions (see the module docstring).

    Parameters
    ----------
    seed : int
        Seed of the inner folds' random assignments.
    members : names of baselines with a predicted mean change (default :data:`MEMBERS`; a
        comma-separated string from the command line)
    inner_unit, inner_folds : as for the set models' ``base=auto``
    embeddings, n_components : passed to the members that take a gene table (linear, knn)
    """

    name = "blend"
    takes_embeddings = True

    def __init__(self, seed: int = 0, members: tuple[str, ...] | list[str] | str = MEMBERS,
                 inner_unit: str = "auto", inner_folds: int = 5, embeddings: str = "default",
                 n_components: int = 10, **params: Any) -> None:
        from .set_residual import base_names, check_inner

        if isinstance(members, str):
            members = [m.strip() for m in members.split(",") if m.strip()]
        members = [str(m) for m in members]
        allowed = [n for n in base_names() if n != self.name]
        bad = [m for m in members if m not in allowed]
        if bad or not members:
            raise InputError(f"blend: members={members!r} must be baselines with a predicted "
                             f"mean change: {', '.join(allowed)} (e.g. members=linear,knn).")
        check_inner(inner_unit, inner_folds, "blend")
        super().__init__(seed=seed, members=members, inner_unit=inner_unit,
                         inner_folds=int(inner_folds), embeddings=embeddings,
                         n_components=n_components, **params)
        self.member_models: list[MeanShiftModel] = []
        self.weights = np.zeros(0)
        self.inner_unit_used = ""
        self._preset: tuple[np.ndarray, str] | None = None

    @property
    def training_summary(self) -> dict[str, str]:
        """The weights and the inner unit they were learned on (a column of benchmark fits)."""
        return {"blend_weights": self.describe_weights(), "inner_unit": self.inner_unit_used}

    @property
    def table_used(self) -> str | None:
        """The gene table the members used (``embeddings_used`` of linear/knn, e.g. "train"
        where "default" had no row for the training genes); None when no member takes one."""
        used = {str(m.embeddings_used) for m in self.member_models
                if getattr(m, "embeddings_used", None)}
        return ",".join(sorted(used)) or None

    def fit_with_weights(self, exp: Experiment, mask: np.ndarray,
                         weights: np.ndarray) -> BlendBaseline:
        """Fit the members on the training cells and use ``weights`` (n_members,), learned by
        the caller on inner folds (of this model's ``inner_unit``, resolved) of the same cells
        (``base=auto``: the same assignments, so the same weights as :meth:`fit`)."""
        self._preset = (np.asarray(weights, float), self.params["inner_unit"])
        try:
            return self.fit(exp, mask)
        finally:
            self._preset = None

    def _member(self, name: str) -> MeanShiftModel:
        from . import get_model_class

        cls = get_model_class(name)
        extra = {k: self.params[k] for k in ("embeddings", "n_components")
                 if getattr(cls, "takes_embeddings", False)}
        return cls(seed=self.seed, **extra)

    def _fit(self, exp: Experiment, mask: np.ndarray) -> None:
        from .set_residual import (
            _MeansOnly,
            inner_assignments,
            out_of_fold_deltas,
            real_deltas,
        )

        super()._fit(exp, mask)
        names = self.params["members"]
        self.member_models = [self._member(n).fit(exp, mask) for n in names]
        if self._preset is not None:
            self.weights, self.inner_unit_used = self._preset
            return
        keys = list(zip(self.cond_pert.tolist(), self.cond_ctx.tolist(), strict=True))
        unit, assignments = inner_assignments(keys, self.params["inner_unit"],
                                              self.params["inner_folds"], self.seed,
                                              exp.components)
        self.inner_unit_used = unit
        if (assignments[0] < 0).all():
            first = "cell_mean" if "cell_mean" in names else names[0]
            warnings.warn(f"blend: inner_unit={unit!r} leaves fewer than two training "
                          f"conditions to hold out, so no weights can be learned; blend is "
                          f"{first} here; train on more conditions for a blend.", stacklevel=3)
            self.weights = np.array([1.0 * (n == first) for n in names])
            return
        means = _MeansOnly(exp, mask)  # inner folds drop whole conditions: means suffice
        real = real_deltas(means, mask, keys)
        gram, rhs = 0.0, 0.0
        with warnings.catch_warnings():  # the members' own fits above already warned
            warnings.simplefilter("ignore")
            for folds in assignments:
                held = folds >= 0
                deltas = np.stack([out_of_fold_deltas(n, means, mask, keys, folds, self.seed,
                                                      make=self._member)[held] for n in names])
                g, b = normal_equations(deltas, real[held])
                gram, rhs = gram + g, rhs + b
        self.weights = nnls_weights(gram, rhs)

    def describe_weights(self) -> str:
        """The weights that round to at least 0.01, largest first, e.g.
        ``"knn:0.61 cell_mean:0.33"``."""
        order = np.argsort(-self.weights, kind="stable")
        return " ".join(f"{self.params['members'][i]}:{self.weights[i]:.2f}" for i in order
                        if self.weights[i] >= SHOWN_WEIGHT) or "none (no change)"

    def delta(self, pert: str, ctx: str) -> np.ndarray:
        """The weighted sum of the members' mean changes, shape (n_genes,)."""
        out = np.zeros(self.ctrl_mean.shape[1])
        for w, model in zip(self.weights, self.member_models, strict=True):
            if w > 0:
                out += w * model.delta(pert, ctx)
        return out

    def predict(self, exp: Experiment, conditions: Iterable[Condition] | pd.DataFrame,
                n_cells: int | Mapping[Condition, int] = 100,
                include_controls: bool = False) -> ad.AnnData:
        """As :meth:`PerturbationModel.predict`; first warns, as linear/knn do, where a
        member with weight falls back for perturbations without a gene-table row."""
        self._check_fitted()
        sep, control = self.keys.get("separator", "+"), self.keys.get("control", exp.control)
        perts = sorted({canonical_label(p, sep, control)
                        for p, _ in _parse_conditions(conditions, 1)[0]})
        for w, model in zip(self.weights, self.member_models, strict=True):
            can = getattr(model, "_can_use_vector", None)
            missing = [p for p in perts if can is not None and not can(p)]
            if w >= SHOWN_WEIGHT and missing:
                warnings.warn(f"blend: member {model.name} (weight {w:.2f}) has no gene-table "
                              f"row for {len(missing)} of {len(perts)} perturbations "
                              f"({preview(missing, 5)}); it predicts those with its fallback.",
                              stacklevel=2)
        return super().predict(exp, conditions, n_cells, include_controls)

    def _state(self) -> dict[str, np.ndarray]:
        state = {**super()._state(), "weights": self.weights,
                 "inner_unit_used": np.asarray(self.inner_unit_used, dtype=str)}
        for i, model in enumerate(self.member_models):
            state.update({f"m{i}.{k}": v for k, v in model._state().items()})
        return state

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        super()._set_state({k: v for k, v in state.items() if not _MEMBER_KEY.match(k)})
        self.inner_unit_used = str(self.inner_unit_used)
        self.member_models = []
        for i, name in enumerate(self.params["members"]):
            model = self._member(name)
            model.genes, model.keys = self.genes, self.keys
            model.vocabulary, model.contexts = self.vocabulary, self.contexts
            prefix = f"m{i}."
            model._set_state({k[len(prefix):]: v for k, v in state.items()
                              if k.startswith(prefix)})
            self.member_models.append(model)
