"""An :class:`Experiment`: a validated, log1p-normalised AnnData plus the keys that describe it.

Data flows one way: h5ad -> :func:`read_experiment` -> Experiment -> splits / models / eval.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError, preview
from . import validate
from .labels import components, map_targets, single_vocabulary
from .preprocess import (
    Scale,
    detect_scale,
    normalization_record,
    normalize_log1p,
    read_normalization,
    uns_record,
)
from .reading import canonical_obs_labels, open_h5ad, select_genes

NO_CONTEXT = "all"


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
        if self.adata.isbacked or self.normalize_on_read or self.matrix is not None:
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


def read_experiment(
    source: str | os.PathLike | ad.AnnData,
    perturbation_key: str,
    control: str,
    context_key: str | None = None,
    batch_key: str | None = None,
    layer: str | None = None,
    backed: bool = False,
    separator: str = "+",
    min_cells: int = 3,
    drop_small_groups: bool = False,
    exclude: Sequence[str] = (),
    n_top_genes: int | None = None,
    input_scale: Scale | None = None,
) -> Experiment:
    """Read and validate an h5ad (or AnnData) into a log1p-normalised :class:`Experiment`.

    Parameters
    ----------
    source : path to .h5ad, or an AnnData (not modified)
    perturbation_key : obs column with perturbation labels ('A', 'A+B', control label)
    control : label of control cells in ``perturbation_key``
    context_key, batch_key : optional obs columns (cell line / cell type; batch)
    layer : use ``adata.layers[layer]`` instead of ``X``
    backed : open the file backed (rows read on demand) for files larger than memory
    separator : joins singles of a combination
    min_cells : fail when a (perturbation, context) group has fewer cells ...
    drop_small_groups : ... unless this is set, which drops those cells instead
    exclude : perturbation labels to drop before anything else (e.g. 'unassigned')
    n_top_genes : keep only this many highly variable genes (targets always kept), ranked on
        all cells; to rank on a fold's training cells use ``select_genes(exp, n, mask=...)``
    input_scale : override the detected scale ('counts', 'log1p', 'normalized')

    Raises
    ------
    InputError
        One line naming the problem and its fix.
    """
    from .store import is_store

    if not isinstance(source, ad.AnnData) and is_store(source):
        from .store_experiment import read_store

        if layer is not None or input_scale is not None:
            raise InputError("layer= / input_scale= do not apply to a store (it holds "
                             "log1p-normalised X); convert the layer you want instead.")

        return read_store(source, perturbation_key, control, context_key, batch_key,
                          separator=separator, min_cells=min_cells,
                          drop_small_groups=drop_small_groups, exclude=exclude,
                          n_top_genes=n_top_genes)
    adata = open_h5ad(source, backed)
    obs = adata.obs
    validate.check_obs_column(obs, perturbation_key, "--perturbation-key")
    validate.check_obs_column(obs, context_key, "--context-key")
    validate.check_obs_column(obs, batch_key, "--batch-key")
    control = str(control).strip()
    labels = canonical_obs_labels(adata, perturbation_key, separator, control)
    validate.check_label_text(labels, separator, perturbation_key)
    validate.check_control(labels, control, perturbation_key)
    validate.check_unique_names(adata)
    validate.check_not_empty(adata)

    keep = ~np.isin(labels, list(exclude)) if exclude else np.ones(adata.n_obs, bool)
    contexts = (
        obs[context_key].astype(str).to_numpy()
        if context_key
        else np.full(adata.n_obs, NO_CONTEXT, dtype=object)
    )
    if drop_small_groups and min_cells > 1:
        grp = pd.Series(1, index=pd.MultiIndex.from_arrays([labels, contexts])).groupby(
            level=[0, 1]
        ).transform("size").to_numpy()
        keep &= grp >= min_cells
        # control cells are never dropped for being few: they are reference, not a group
        keep |= (labels == control) & ~np.isin(labels, list(exclude))
    validate.check_group_sizes(labels[keep], contexts[keep], min_cells, perturbation_key)
    if not keep.all():
        adata = adata[keep]
        if not adata.isbacked:
            adata = adata.copy()

    if layer is not None:
        if layer not in adata.layers:
            raise InputError(
                f"layer {layer!r} not found; available layers: "
                f"{preview(adata.layers.keys()) or '(none)'}. Omit --layer to use X."
            )
        if adata.isbacked:
            raise InputError("layer= cannot be combined with backed=True; copy it into X first.")
        adata = ad.AnnData(X=adata.layers[layer], obs=adata.obs, var=adata.var)
    where = f"layer {layer!r}" if layer else "X"
    validate.check_values(adata.X, where)

    validate.check_declared_scale(input_scale, detect_scale(adata.X))
    scale = input_scale or detect_scale(adata.X)
    if input_scale not in (None, "counts", "log1p", "normalized"):
        raise InputError(
            f"input_scale {input_scale!r} is not one of counts, log1p, normalized."
        )
    exp = Experiment(
        adata=adata,
        perturbation_key=perturbation_key,
        control=control,
        context_key=context_key,
        batch_key=batch_key,
        separator=separator,
        input_scale=scale,
    )
    recorded = read_normalization(adata.uns)
    if scale == "log1p" and recorded is not None and recorded["log1p"]:
        exp.meta["normalization"] = recorded  # a file perturbcast normalised before
    if adata.isbacked:
        exp.normalize_on_read = scale != "log1p"
    else:
        if adata.is_view:
            adata = adata.copy()
        adata.X = normalize_log1p(adata.X, scale)
        adata.uns["perturbcast"] = {**dict(adata.uns.get("perturbcast", {})),
                                    "normalization": uns_record(exp.normalization)}
        exp.adata = adata
    if n_top_genes is not None and n_top_genes < exp.n_genes:
        exp = select_genes(exp, n_top_genes)
    return exp
