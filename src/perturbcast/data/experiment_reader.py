"""Read an h5ad, an AnnData or a store into a validated, log1p-normalised
:class:`~perturbcast.data.experiment.Experiment`."""

from __future__ import annotations

import os
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import InputError, preview
from . import validate
from .experiment import NO_CONTEXT, Experiment
from .preprocess import Scale, detect_scale, normalize_log1p, read_normalization, uns_record
from .reading import canonical_obs_labels, open_h5ad, select_genes


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
    exclude: str | Sequence[str] | None = (),
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
    exclude : perturbation labels to drop before anything else (e.g. 'unassigned'); the
        cells dropped per label are in ``exp.meta["excluded"]`` (0: no cell had the label),
        and a model fitted on ``exp`` saves the labels so predicting drops them too
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

    keep, excluded = validate.excluded_cells(labels, perturbation_key, control, separator,
                                             exclude)
    validate.check_unassigned(labels, perturbation_key, list(excluded))
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
        keep |= (labels == control)  # (never excluded: refused above)
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
    if excluded:
        exp.meta["excluded"] = excluded  # label -> cells dropped; a model saves the labels
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
