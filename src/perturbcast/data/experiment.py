"""An :class:`Experiment`: a validated, log1p-normalised AnnData plus the keys that describe it.

Data flows one way: h5ad -> :func:`read_experiment` -> Experiment -> splits / models / eval.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .labels import components, map_targets, single_vocabulary
from .preprocess import (
    Scale,
    normalization_record,
    normalize_log1p,
)

NO_CONTEXT = "all"
STORE_CHUNK = 4096  # rows per sparse read of a store in group_means


@dataclass
class Experiment:
    """A perturbation experiment ready for modelling.

    ``adata.X`` holds log1p(total 1e4)-normalised float32 expression, except for backed files of
    raw counts, which are normalised per block as rows are read (:meth:`rows`).

    Attributes
    ----------
    adata : AnnData
        Cells x genes; ``obs`` keeps the user's columns.
    perturbation_key, control : str
        obs column with perturbation labels and the label of control cells.
    context_key, batch_key : str or None
        Optional obs columns with the cell context (cell line / type) and batch.
    separator : str
        Joins the singles of a combination ('A+B').
    input_scale : {'counts', 'log1p', 'normalized'}
        What the file held before normalisation.
    """

    adata: ad.AnnData
    perturbation_key: str
    control: str
    context_key: str | None = None
    batch_key: str | None = None
    separator: str = "+"
    input_scale: Scale = "log1p"
    normalize_on_read: bool = False
    meta: dict = field(default_factory=dict)
    matrix: Any = None  # a matrix backend (rows(idx), shape, isbacked), e.g. a StoreMatrix

    # ---- labels ---------------------------------------------------------------------------
    @property
    def normalization(self) -> dict:
        """How ``rows()`` values were made: the file's scale, target sum (None: the file's own,
        for log1p input) and log1p; predictions and evaluation carry it along."""
        return self.meta.get("normalization") or normalization_record(self.input_scale)

    @property
    def genes(self) -> np.ndarray:
        return np.asarray(self.adata.var_names.astype(str))

    @property
    def n_cells(self) -> int:
        return int(self.adata.n_obs)

    @property
    def n_genes(self) -> int:
        return int(self.adata.n_vars)

    @cached_property
    def perturbations(self) -> np.ndarray:
        """Perturbation label per cell, shape (n_cells,)."""
        return str_labels(self.adata.obs[self.perturbation_key])

    @cached_property
    def contexts(self) -> np.ndarray:
        """Context label per cell ('all' without a context key), shape (n_cells,)."""
        if self.context_key is None:
            return np.full(self.n_cells, NO_CONTEXT, dtype=object)
        return str_labels(self.adata.obs[self.context_key])

    @cached_property
    def batches(self) -> np.ndarray | None:
        if self.batch_key is None:
            return None
        return str_labels(self.adata.obs[self.batch_key])

    @property
    def is_control(self) -> np.ndarray:
        return self.perturbations == self.control

    def perturbation_names(self, include_control: bool = False) -> list[str]:
        names = sorted(set(self.perturbations))
        return names if include_control else [n for n in names if n != self.control]

    def context_names(self) -> list[str]:
        return sorted(set(self.contexts))

    def components(self, label: str) -> tuple[str, ...]:
        return components(label, self.separator, self.control)

    def singles(self) -> list[str]:
        """Sorted single perturbations present (combos split)."""
        return single_vocabulary(self.perturbation_names(), self.separator, self.control)

    def target_index(self, singles: Sequence[str] | None = None) -> dict[str, int]:
        """Single perturbation -> index of its target among the measured genes (if measured)."""
        return map_targets(self.singles() if singles is None else singles, self.genes)

    def conditions(self, include_control: bool = False) -> pd.DataFrame:
        """One row per (perturbation, context) with its number of cells."""
        df = pd.DataFrame({"perturbation": self.perturbations, "context": self.contexts})
        out = df.groupby(["perturbation", "context"]).size().rename("n_cells").reset_index()
        if not include_control:
            out = out[out.perturbation != self.control]
        return out.sort_values(["context", "perturbation"]).reset_index(drop=True)

    def index_of(self, perturbation: str, context: str | None = None) -> np.ndarray:
        """Cell indices of a perturbation (in one context, or all)."""
        mask = self.perturbations == perturbation
        if context is not None:
            mask &= self.contexts == context
        return np.flatnonzero(mask)

    # ---- expression ------------------------------------------------------------------------
    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Dense float32 log1p-normalised expression of cells ``idx``, shape (len(idx), n_genes).

        ``idx`` may be in any order and repeat cells (backed files are read at the unique,
        sorted rows, as h5py requires, then expanded)."""
        idx = np.asarray(idx, dtype=np.int64)
        if self.matrix is not None:  # out-of-core store: already log1p-normalised
            return self.matrix.rows(idx)
        if self.adata.isbacked:
            uniq, inverse = np.unique(idx, return_inverse=True)
            block = self.adata.X[uniq]
            block = block.toarray() if sp.issparse(block) else np.asarray(block)
            block = block[inverse]
        else:
            block = self.adata.X[idx]
            block = block.toarray() if sp.issparse(block) else np.asarray(block)
        if self.normalize_on_read:
            block = normalize_log1p(block, self.input_scale)
        return np.asarray(block, dtype=np.float32)

    def iter_blocks(self, chunk: int = 8192):
        """Yield (start, dense float32 block) over all cells in order."""
        for start in range(0, self.n_cells, chunk):
            yield start, self.rows(np.arange(start, min(start + chunk, self.n_cells)))

    def group_means(
        self, by: Sequence[str] = ("perturbation", "context"), mask: np.ndarray | None = None
    ) -> tuple[pd.DataFrame, np.ndarray]:
        """Mean log1p expression per group.

        Parameters
        ----------
        by : subset of {'perturbation', 'context', 'batch'}
        mask : bool array, shape (n_cells,), optional
            Only these cells.

        Returns
        -------
        keys : DataFrame, one row per group (columns ``by`` and ``n_cells``)
        means : ndarray, shape (n_groups, n_genes), float64
        """
        cols = {
            "perturbation": self.perturbations,
            "context": self.contexts,
            "batch": self.batches if self.batches is not None else np.full(self.n_cells, "all"),
        }
        df = pd.DataFrame({k: cols[k] for k in by})
        keep = np.ones(self.n_cells, bool) if mask is None else np.asarray(mask, bool)
        codes, uniques = pd.factorize(pd.MultiIndex.from_frame(df[keep]), sort=True)
        cell_idx = np.flatnonzero(keep)
        ind = sp.csr_matrix(
            (np.ones(cell_idx.size), (codes, cell_idx)), shape=(len(uniques), self.n_cells)
        )
        sums = np.zeros((len(uniques), self.n_genes))
        if self.matrix is not None:  # a store: sparse chunks, only those holding kept cells
            for start in range(0, self.n_cells, STORE_CHUNK):
                part = ind[:, start:start + STORE_CHUNK]
                if part.nnz:
                    rows = np.arange(start, min(start + STORE_CHUNK, self.n_cells))
                    sums += (part @ self.matrix.sparse_rows(rows).astype(np.float64)).toarray()
        elif self.adata.isbacked or self.normalize_on_read:
            for start, block in self.iter_blocks():
                sums += ind[:, start : start + block.shape[0]] @ block.astype(np.float64)
        else:
            x = self.adata.X
            prod = ind @ (x.astype(np.float64) if sp.issparse(x) else np.asarray(x, np.float64))
            sums = prod.toarray() if sp.issparse(prod) else np.asarray(prod)
        n = np.asarray(ind.sum(axis=1)).ravel()
        keys = pd.DataFrame(list(uniques), columns=list(by))
        keys["n_cells"] = n.astype(int)
        return keys, sums / n[:, None]

    # ---- subsetting ------------------------------------------------------------------------
    def subset(self, mask: np.ndarray) -> Experiment:
        """A new Experiment on the selected cells (in-memory copy; backed stays a view)."""
        mask = np.asarray(mask)
        sub = self.adata[mask]
        if not self.adata.isbacked:
            sub = sub.copy()
        if self.matrix is not None:
            rows = np.arange(self.n_cells)[mask]
            return replace(self, adata=sub, matrix=self.matrix.subset(rows))
        return replace(self, adata=sub)

    def describe(self) -> str:
        return (
            f"{self.n_cells} cells x {self.n_genes} genes; "
            f"{len(self.perturbation_names())} perturbations + control {self.control!r}; "
            f"{len(self.context_names())} context(s); input {self.input_scale}"
        )


def str_labels(column: pd.Series) -> np.ndarray:
    """``column.astype(str).to_numpy()``; for a categorical column without missing values,
    the category strings taken by code (one shared string per category, not one per cell)."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        codes = column.cat.codes.to_numpy()
        if codes.size and codes.min() >= 0:
            names = np.asarray(column.cat.categories.astype(str).to_numpy(), dtype=object)
            return names[codes]
    return column.astype(str).to_numpy()
