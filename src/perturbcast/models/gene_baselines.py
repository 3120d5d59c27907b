"""Baselines that use gene knowledge: ``linear`` (Ahlmann-Eltze et al. 2025) and ``knn``.

Both take the same ``embeddings=`` spec as the set models (``"default"``: the built-in human
gene table; ``"train"``: the top principal components of the training delta matrix, rows of
measured target genes; or table path(s), see
:func:`~perturbcast.models.perturbation_features.resolve_embeddings`). A perturbation's vector
is its target's row (matched exactly, then case-insensitively); a combination's is the sum of
its singles' rows. Both predict the context's mean training delta plus a perturbation term.

A perturbation with no row (any of its components lacks one) gets its mean delta in the other
training contexts, else the context's mean delta; ``predict`` warns with how many did.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import pandas as pd

from ..data.experiment import Experiment
from ..errors import InputError, preview
from .base import Condition, _parse_conditions
from .baselines import MeanShiftModel
from .perturbation_features import PerturbationFeatures, resolve_embeddings


class GeneTableBaseline(MeanShiftModel):
    """Shared machinery: the gene table, the perturbation vectors and the announced fallback."""

    takes_embeddings: ClassVar[bool] = True

    def __init__(self, seed: int = 0, embeddings: str = "default", n_components: int = 10,
                 **params: Any) -> None:
        if embeddings in (None, "none"):
            raise InputError(f"{self.name} needs gene vectors; embeddings='none' gives none; use "
                             "'default', 'train' or a table path.")
        super().__init__(seed=seed, embeddings=embeddings, n_components=n_components, **params)

    def _fit_extra(self, exp: Experiment) -> None:
        n = len(self.cond_delta)
        self.cond_resid = self.cond_delta - (np.stack([self.context_delta(c) for c in
                                                       self.cond_ctx]) if n else 0.0)
        y = self.cond_resid.T  # genes x conditions
        k = max(1, min(int(self.params["n_components"]), n - 1, exp.n_genes))
        if n >= 2:
            u, s, _ = np.linalg.svd(y - y.mean(axis=1, keepdims=True), full_matrices=False)
            self.gene_emb = u[:, :k] * s[:k]
        else:
            self.gene_emb = np.zeros((exp.n_genes, 0))
        comps = sorted({c for p in self.cond_pert for c in exp.components(p)})
        names, vecs, used = resolve_embeddings(
            self.params["embeddings"], comps, lambda: (exp.genes.astype(str), self.gene_emb),
            self.name)
        if used != "train" and vecs.size:  # tables: unit spread; "train" as in the paper
            vecs = vecs / (vecs.std() + 1e-12)
        self.embeddings_used = used
        self.table = PerturbationFeatures([], names, vecs, exp.separator, exp.control)
        emb = [self.vector_of(p) for p in self.cond_pert]
        self.cond_has = np.array([e is not None for e in emb], bool)
        self.cond_vec = np.stack([e if e is not None else np.zeros(self.table.n_features)
                                  for e in emb]) if n else np.zeros((0, self.table.n_features))
        missing = sorted(set(self.cond_pert[~self.cond_has]))
        if missing:
            warnings.warn(f"{self.name}: {len(missing)} of {len(set(self.cond_pert))} training "
                          f"perturbations have no row in the gene table (embeddings={used!r}: "
                          f"{preview(missing, 5)}); they are left out of its fit.", stacklevel=2)
        self._fit_vectors(exp)

    def _fit_vectors(self, exp: Experiment) -> None:
        raise NotImplementedError

    def vector_of(self, pert: str) -> np.ndarray | None:
        """Sum of the components' table rows, shape (n_features,); None if one lacks a row."""
        rows = [self.table.feature_row(c) for c in self.table.components(pert)]
        if not rows or any(r is None for r in rows) or not self.table.n_features:
            return None
        return self.table.feature_vectors[rows].astype(np.float64).sum(0)

    def fallback_delta(self, pert: str, ctx: str) -> np.ndarray:
        """Delta of a perturbation without a vector, shape (n_genes,): its mean delta in other
        training contexts, else the context's mean delta."""
        d = self.perturbation_delta(pert, exclude_context=ctx)
        return d if d is not None else self.context_delta(ctx)

    def predict(self, exp: Experiment, conditions: Iterable[Condition] | pd.DataFrame,
                n_cells: int | Mapping[Condition, int] = 100,
                include_controls: bool = False) -> ad.AnnData:
        """As :meth:`PerturbationModel.predict`; warns first with how many perturbations have
        no row in the gene table (they get the fallback delta)."""
        self._check_fitted()
        conds, _ = _parse_conditions(conditions, 1)
        perts = sorted({p for p, _ in conds})
        missing = [p for p in perts if not self._can_use_vector(p)]
        if missing:
            warnings.warn(f"{self.name}: {len(missing)} of {len(perts)} perturbations have no "
                          f"row in the gene table (embeddings={self.embeddings_used!r}: "
                          f"{preview(missing, 5)}); predicted with their mean change in other "
                          "contexts, else the context's mean change.", stacklevel=2)
        return super().predict(exp, conditions, n_cells, include_controls)

    def _can_use_vector(self, pert: str) -> bool:
        return self.vector_of(pert) is not None

    def _state(self) -> dict[str, np.ndarray]:
        return {**super()._state(), **self.table.state(), "gene_emb": self.gene_emb,
                "cond_resid": self.cond_resid, "cond_has": self.cond_has,
                "cond_vec": self.cond_vec,
                "embeddings_used": np.asarray(self.embeddings_used, dtype=str)}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        self.table = PerturbationFeatures.from_state(state, self.keys["separator"],
                                                     self.keys["control"])
        super()._set_state({k: v for k, v in state.items() if not k.startswith("pf_")})
        self.embeddings_used = str(self.embeddings_used)


class LinearBaseline(GeneTableBaseline):
    """Ahlmann-Eltze et al. (2025) linear model.

    delta(p, c) = b_c + G W [1, P_p], fitted by ridge (``ridge``=0.1) on the training deltas,
    where G (genes x k) holds the top-``n_components`` PCs of the training delta matrix and P_p
    is p's vector from ``embeddings`` (combos: the sum over their singles; the table scaled to
    unit spread; with ``"train"``, G's row of the target gene). b_c is the context's mean
    training delta.
    """

    name = "linear"

    def __init__(self, seed: int = 0, n_components: int = 10, ridge: float = 0.1,
                 embeddings: str = "default", **params: Any) -> None:
        super().__init__(seed=seed, embeddings=embeddings, n_components=n_components,
                         ridge=ridge, **params)

    def _fit_vectors(self, exp: Experiment) -> None:
        lam = float(self.params["ridge"])
        self.weights = np.zeros((0, 1))
        use = self.cond_has
        if use.sum() < 2 or not self.gene_emb.shape[1]:
            return
        p = np.column_stack([np.ones(use.sum()), self.cond_vec[use]])
        g, y = self.gene_emb, self.cond_resid.T
        left = np.linalg.solve(g.T @ g + lam * np.eye(g.shape[1]), g.T @ y[:, use])
        self.weights = left @ p @ np.linalg.inv(p.T @ p + lam * np.eye(p.shape[1]))

    def _can_use_vector(self, pert: str) -> bool:
        return self.weights.shape[0] > 0 and self.vector_of(pert) is not None

    def _state(self) -> dict[str, np.ndarray]:
        return {**super()._state(), "weights": self.weights}

    def delta(self, pert: str, ctx: str) -> np.ndarray:
        emb = self.vector_of(pert) if self.weights.shape[0] else None
        if emb is None:
            return self.fallback_delta(pert, ctx)
        return self.context_delta(ctx) + self.gene_emb @ (self.weights @ np.r_[1.0, emb])


class KnnBaseline(GeneTableBaseline):
    """Mean change of the k training perturbations nearest in the gene table.

    delta(p, c) = b_c + mean over the k training perturbations q nearest to p (cosine of their
    vectors) of r_q, q's training delta minus its context's mean delta (averaged over q's
    contexts). b_c is the context's mean training delta. ``k`` (default: chosen) is picked from
    ``k_grid`` by leave-one-out over the training perturbations only: each is predicted from
    its nearest others, and the k with the smallest squared error wins (the smaller on ties).
    ``n_components``: PCs of the training deltas that make the ``embeddings="train"`` vectors.
    With ``"train"`` those PCs are computed from all training perturbations, the held-out one
    included, so the leave-one-out error is slightly optimistic there (not with tables).
    """

    name = "knn"

    def __init__(self, seed: int = 0, k: int | None = None,
                 k_grid: tuple[int, ...] | list[int] = (1, 3, 5, 10, 20),
                 embeddings: str = "default", n_components: int = 10, **params: Any) -> None:
        is_grid = isinstance(k_grid, list | tuple | np.ndarray)
        values = [*([] if k is None else [k]), *(k_grid if is_grid else [])]
        if not is_grid or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                  for v in values):
            raise InputError(f"knn: k={k!r} and k_grid={k_grid!r} must be integers (k=None "
                             "chooses k from k_grid); e.g. --param k=5.")
        if k is not None and int(k) < 1 or not list(k_grid) or min(k_grid) < 1:
            raise InputError(f"knn: k={k!r} and k_grid={list(k_grid)!r} must be >= 1 (k=None "
                             "chooses k from k_grid).")
        super().__init__(seed=seed, embeddings=embeddings, n_components=n_components, k=k,
                         k_grid=[int(x) for x in k_grid], **params)

    def _fit_vectors(self, exp: Experiment) -> None:
        perts = sorted(set(self.cond_pert[self.cond_has]))
        self.nn_pert = np.asarray(perts, dtype=str)
        self.nn_resid = np.stack([self.cond_resid[self.cond_pert == p].mean(0) for p in perts]) \
            if perts else np.zeros((0, exp.n_genes))
        self.nn_unit = _unit(np.stack([self.vector_of(p) for p in perts])) if perts \
            else np.zeros((0, self.table.n_features))
        self.cv_error = np.full(len(self.params["k_grid"]), np.nan)
        if self.params["k"] is not None:
            self.k = int(self.params["k"])
        else:
            self.k, self.cv_error = self.choose_k(self.nn_unit, self.nn_resid,
                                                 self.params["k_grid"])

    @staticmethod
    def choose_k(unit: np.ndarray, resid: np.ndarray, k_grid: list[int]
                 ) -> tuple[int, np.ndarray]:
        """Leave-one-out choice of k.

        Parameters
        ----------
        unit : array, shape (n_perts, n_features); unit-length perturbation vectors
        resid : array, shape (n_perts, n_genes); their mean change minus the context mean

        Returns
        -------
        k, and the mean squared error of each k_grid entry (NaN where k > n_perts - 1)
        """
        n = len(unit)
        errors = np.full(len(k_grid), np.nan)
        valid = [i for i, k in enumerate(k_grid) if k <= n - 1]
        if not valid:
            return max(1, min(min(k_grid), n)), errors
        sim = unit @ unit.T
        np.fill_diagonal(sim, -np.inf)
        kmax = max(k_grid[i] for i in valid)
        order = np.argsort(-sim, axis=1, kind="stable")[:, :kmax]
        sums = np.zeros((len(valid), resid.shape[1]))
        for q in range(n):
            csum = np.cumsum(resid[order[q]], axis=0)
            for j, i in enumerate(valid):
                k = k_grid[i]
                sums[j] += (csum[k - 1] / k - resid[q]) ** 2
        errors[valid] = sums.sum(1) / n
        return int(k_grid[int(np.nanargmin(errors))]), errors

    def neighbours(self, pert: str) -> np.ndarray:
        """Indices into ``nn_pert`` of the k nearest training perturbations to ``pert``."""
        v = self.vector_of(pert)
        sim = self.nn_unit @ _unit(v[None, :])[0]
        return np.argsort(-sim, kind="stable")[:min(self.k, len(sim))]

    def _can_use_vector(self, pert: str) -> bool:
        return len(self.nn_pert) > 0 and self.vector_of(pert) is not None

    def _state(self) -> dict[str, np.ndarray]:
        return {**super()._state(), "nn_pert": self.nn_pert, "nn_resid": self.nn_resid,
                "nn_unit": self.nn_unit, "k": np.asarray(self.k), "cv_error": self.cv_error}

    def _set_state(self, state: dict[str, np.ndarray]) -> None:
        super()._set_state(state)
        self.k = int(self.k)

    def delta(self, pert: str, ctx: str) -> np.ndarray:
        if not self._can_use_vector(pert):
            return self.fallback_delta(pert, ctx)
        return self.context_delta(ctx) + self.nn_resid[self.neighbours(pert)].mean(0)


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), same shape."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
