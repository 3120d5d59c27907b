"""An :class:`~perturbcast.data.Experiment` backed by a store (rows read from memory maps)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from . import validate
from .experiment import NO_CONTEXT, Experiment, str_labels
from .reading import select_genes
from .store import open_store


def read_store(path: str | os.PathLike, perturbation_key: str | None = None,
               control: str | None = None, context_key: str | None = None,
               batch_key: str | None = None, separator: str = "+", min_cells: int = 3,
               drop_small_groups: bool = False, exclude: str | Sequence[str] | None = (),
               n_top_genes: int | None = None) -> Experiment:
    """Open a store (from ``perturbcast convert``) as an Experiment; nothing is loaded densely.

    Keys default to those the store was converted with; any obs column of the store can be
    used instead (groups are then no longer contiguous, which only costs read speed).
    Values are the store's log1p(total 1e4) expression (``input_scale='log1p'``).
    ``read_experiment(path, ...)`` on a store directory calls this.
    """
    matrix, adata, _ = open_store(path)
    info = matrix.info
    perturbation_key = perturbation_key or info["perturbation_key"]
    control = control if control is not None else info["control"]
    if context_key is None and info.get("context_key"):
        context_key = info["context_key"]
    if batch_key is None and info.get("batch_key"):
        batch_key = info["batch_key"]
    obs = adata.obs
    validate.check_obs_column(obs, perturbation_key, "--perturbation-key")
    validate.check_obs_column(obs, context_key, "--context-key")
    validate.check_obs_column(obs, batch_key, "--batch-key")
    labels = str_labels(obs[perturbation_key])
    validate.check_control(labels, control, perturbation_key)
    contexts = (str_labels(obs[context_key]) if context_key
                else np.full(adata.n_obs, NO_CONTEXT, dtype=object))
    keep, excluded = validate.excluded_cells(labels, perturbation_key, control, separator,
                                             exclude)
    validate.check_unassigned(labels, perturbation_key, list(excluded))
    if drop_small_groups and min_cells > 1:
        size = validate.group_sizes(labels, contexts)
        keep &= (size >= min_cells) | (labels == control)
    validate.check_group_sizes(labels[keep], contexts[keep], min_cells, perturbation_key)
    exp = Experiment(adata=adata, perturbation_key=perturbation_key, control=control,
                     context_key=context_key, batch_key=batch_key, separator=separator,
                     input_scale="log1p", matrix=matrix,
                     meta={"store": str(matrix.path), "store_normalization":
                           info["normalization"], **({"excluded": excluded} if excluded
                                                     else {})})
    if not keep.all():
        exp = exp.subset(keep)
    if n_top_genes is not None and n_top_genes < exp.n_genes:
        exp = select_genes(exp, n_top_genes)
    return exp
