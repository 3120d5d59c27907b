"""Input checks for an AnnData experiment; each failure is one line naming the fix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError, preview, suggest


def check_obs_column(obs: pd.DataFrame, key: str | None, option: str) -> None:
    """Fail when ``key`` is not a column of ``obs``; list the columns that exist."""
    if key is None:
        return
    if key not in obs.columns:
        raise InputError(
            f"obs column {key!r} not found.{suggest(key, obs.columns)} "
            f"Available columns: {preview(obs.columns)}. Pass {option} with one of them."
        )
    if obs[key].isna().any():
        n = int(obs[key].isna().sum())
        raise InputError(
            f"obs column {key!r} has {n} missing (NaN) values; "
            f"fill or drop those cells before loading."
        )


def check_control(labels: np.ndarray, control: str, key: str) -> None:
    values = pd.unique(labels)
    if control not in set(values):
        raise InputError(
            f"control value {control!r} not found in obs[{key!r}].{suggest(control, values)} "
            f"Values: {preview(sorted(map(str, values)))}. Pass --control with the label of "
            f"your control cells."
        )


def check_unique_names(adata) -> None:
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()
        raise InputError(
            f"duplicate gene names in var_names: {preview(dup, 5)}; "
            f"call adata.var_names_make_unique() and save again."
        )
    if not adata.obs_names.is_unique:
        dup = adata.obs_names[adata.obs_names.duplicated()].unique()
        raise InputError(
            f"duplicate cell names in obs_names: {preview(dup, 5)}; "
            f"call adata.obs_names_make_unique() and save again."
        )


def check_values(x, where: str, chunk: int = 8192) -> None:
    """Fail on NaN/Inf or negative expression values (checked in row chunks; works backed)."""
    n = x.shape[0]
    for start in range(0, n, chunk):
        block = x[start : start + chunk]
        vals = np.asarray(block.data if sp.issparse(block) else block)
        if vals.size == 0:
            continue
        if not np.all(np.isfinite(vals)):
            row = start + _first_bad_row(block, lambda v: ~np.isfinite(v))
            raise InputError(
                f"{where} contains NaN or Inf (first at cell index {row}); "
                f"remove or impute those values before loading."
            )
        if vals.min() < 0:
            row = start + _first_bad_row(block, lambda v: v < 0)
            raise InputError(
                f"{where} contains negative values (first at cell index {row}, min "
                f"{float(vals.min()):.3g}); perturbcast expects raw counts or log1p-normalised "
                f"expression, not scaled/centred data (use layer= for another matrix)."
            )


def _first_bad_row(block, bad) -> int:
    dense = block.toarray() if sp.issparse(block) else np.asarray(block)
    rows = np.flatnonzero(bad(dense).any(axis=1))
    return int(rows[0]) if rows.size else 0


def check_group_sizes(
    labels: np.ndarray, contexts: np.ndarray, min_cells: int, key: str
) -> None:
    """Fail when a (perturbation, context) group has fewer than ``min_cells`` cells."""
    if min_cells <= 1:
        return
    counts = pd.Series(1, index=pd.MultiIndex.from_arrays([labels, contexts])).groupby(
        level=[0, 1]
    ).size()
    small = counts[counts < min_cells]
    if len(small):
        names = [f"{p} ({c}): {n}" if c != "all" else f"{p}: {n}" for (p, c), n in small.items()]
        raise InputError(
            f"{len(small)} group(s) in obs[{key!r}] have fewer than {min_cells} cells "
            f"[{preview(names, 5)}]; drop them (drop_small_groups=True / --drop-small-groups) "
            f"or lower min_cells (--min-cells)."
        )
