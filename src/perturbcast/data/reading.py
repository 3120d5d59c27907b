"""Reading helpers for :func:`~perturbcast.data.experiment_reader.read_experiment`: opening a file,
canonical perturbation labels, and highly variable gene selection."""

from __future__ import annotations

import os
import warnings
from dataclasses import replace
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import InputError
from .labels import canonical_labels
from .preprocess import highly_variable_genes

if TYPE_CHECKING:
    from .experiment import Experiment


def select_genes(exp: Experiment, n_top_genes: int, mask: np.ndarray | None = None
                 ) -> Experiment:
    """Keep the ``n_top_genes`` most variable genes, always keeping measured targets.

    Parameters
    ----------
    mask : bool array, shape (n_cells,), optional
        Rank genes on these cells only, e.g. ``fold.train_mask(exp)``, so that held-out
        perturbations cannot choose the genes (default: all cells).
    """
    keep = np.zeros(exp.n_genes, dtype=bool)
    keep[list(exp.target_index().values())] = True
    cells = np.arange(exp.n_cells) if mask is None else np.flatnonzero(np.asarray(mask, bool))
    if exp.adata.isbacked or exp.normalize_on_read or exp.matrix is not None:
        sample = np.sort(np.random.default_rng(0).permutation(cells)[:20000])
        x = exp.rows(sample)
    else:
        x = exp.adata.X if mask is None else exp.adata.X[cells]
    idx = highly_variable_genes(x, n_top_genes, keep=keep)
    sub = exp.adata[:, idx]
    if not exp.adata.isbacked:
        sub = sub.copy()
    if exp.matrix is not None:
        return replace(exp, adata=sub, matrix=exp.matrix.select_columns(idx))
    return replace(exp, adata=sub)


def canonical_obs_labels(adata: ad.AnnData, key: str, separator: str, control: str
                          ) -> np.ndarray:
    """Make ``obs[key]`` canonical in place ('A+control' -> 'A', whitespace stripped), warning
    with the labels that changed; returns the labels, shape (n_cells,)."""
    labels, changed = canonical_labels(adata.obs[key].to_numpy(), separator, control)
    if changed:
        examples = ", ".join(f"{a!r} -> {b!r}" for a, b in list(changed.items())[:5])
        warnings.warn(f"{len(changed)} label(s) in obs[{key!r}] made canonical (whitespace "
                      f"stripped, {control!r} components dropped): {examples}", stacklevel=3)
        was_cat = isinstance(adata.obs[key].dtype, pd.CategoricalDtype)
        adata.obs[key] = pd.Categorical(labels) if was_cat else labels
    return labels.astype(str)


def open_h5ad(source, backed: bool, option: str = "--data") -> ad.AnnData:
    """An AnnData from a path (backed on request) or a copy of an in-memory AnnData."""
    if isinstance(source, ad.AnnData):
        return source.copy() if not source.isbacked else source
    path = os.fspath(source)
    if not os.path.exists(path):
        raise InputError(f"file not found: {path}; check the path passed to {option}.")
    if os.path.isdir(path):
        raise InputError(f"{path} is a folder, not an .h5ad file (nor a store made by "
                         f"`perturbcast convert`); pass the .h5ad file itself to {option}.")
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as exc:  # noqa: BLE001 - any reader failure is a user input problem
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"could not read {path} as h5ad ({msg}); is it an AnnData file?") from exc
