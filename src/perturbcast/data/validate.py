"""Input checks for an AnnData experiment; each failure is one line naming the fix."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError, preview, suggest
from .labels import canonical_label


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


#: words that control labels usually contain: such values are named first in the error
CONTROL_WORDS = ("control", "ctrl", "non-target", "nontarget", "non_target", "ntc", "scramble",
                 "safe", "unperturbed", "vehicle", "dmso", "neg")


#: labels of cells without one assigned perturbation (guide calling): announced, not guessed at
UNASSIGNED = ("unassigned", "multiplet", "multiplets", "doublet", "doublets", "undetermined",
              "ambiguous", "no_guide", "noguide", "not_assigned")


def check_control(labels: np.ndarray, control: str, key: str) -> None:
    values = pd.unique(labels)
    if control not in set(values):
        names = sorted(map(str, values))
        likely = [v for v in names if any(w in v.lower() for w in CONTROL_WORDS)]
        hint = suggest(control, values) or (
            f" Control-like values: {preview(likely, 5)}." if likely else "")
        raise InputError(
            f"control value {control!r} not found in obs[{key!r}].{hint} "
            f"Values: {preview(likely + [v for v in names if v not in likely])}. Pass "
            f"--control with the label of your control cells."
        )


def excluded_cells(labels: np.ndarray, key: str, control: str, separator: str,
                   exclude: str | Sequence[str] | None) -> tuple[np.ndarray, dict[str, int]]:
    """Cells to keep after dropping the ``exclude`` labels, and each excluded label's number
    of cells (0: no cell has it). Labels are compared in canonical form (whitespace stripped,
    control components dropped), as a file's labels are read; excluding the control label is
    refused.

    Returns
    -------
    keep : ndarray of bool, shape (n_cells,)
    counts : {canonical excluded label: cells dropped}
    """
    if exclude is None:
        exclude = ()
    wanted = [canonical_label(x, separator, control)
              for x in ([exclude] if isinstance(exclude, str) else exclude)]
    if control in wanted:
        raise InputError(f"exclude={list(exclude)!r} names the control label {control!r} of "
                         f"obs[{key!r}]; the controls are every prediction's starting point, "
                         f"so keep them.")
    if not wanted:
        return np.ones(len(labels), bool), {}
    sizes = pd.Series(labels).value_counts()
    canon = {u: canonical_label(u, separator, control) for u in map(str, sizes.index)}
    counts = {w: int(sum(n for u, n in zip(map(str, sizes.index), sizes.to_numpy(), strict=True)
                         if canon[u] == w)) for w in wanted}
    drop = [u for u in sizes.index if canon[str(u)] in counts]
    return ~np.isin(labels, drop), counts


def check_unassigned(labels: np.ndarray, key: str, exclude=()) -> None:
    """Announce cells labelled like guide-calling leftovers (:data:`UNASSIGNED`), which would
    otherwise be trained on as a perturbation of that name without a word (labels in
    ``exclude`` are being dropped: not announced)."""
    odd = [v for v in map(str, pd.unique(labels))
           if v not in exclude and v.strip().lower().replace(" ", "_") in UNASSIGNED]
    if odd:
        n = int(np.isin(labels, odd).sum())
        option = _shell(",".join(odd[:5]))
        warnings.warn(f"obs[{key!r}]: {n} cells are labelled {preview(odd, 5)}, read as a "
                      f"perturbation of that name; if they are cells without one assigned "
                      f"perturbation, drop them on reading (--exclude {option} on "
                      f"the command line; read_experiment(..., exclude={odd[:5]!r})).",
                      stacklevel=3)


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
    """Fail on NaN/Inf or negative expression values (checked in row chunks; works backed).

    Warns when some cells have no expression at all (they stay all-zero when normalised)."""
    n, n_empty = x.shape[0], 0
    for start in range(0, n, chunk):
        block = x[start : start + chunk]
        vals = np.asarray(block.data if sp.issparse(block) else block)
        n_empty += int((np.asarray(block.sum(axis=1, dtype=np.float64)).ravel() == 0).sum())
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
    if n_empty and x.shape[1]:
        warnings.warn(
            f"{n_empty} cell(s) in {where} have zero total expression; they stay all-zero "
            f"after normalisation. Filter them (e.g. scanpy.pp.filter_cells(min_counts=1)).",
            stacklevel=3,
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
    pc, pu = pd.factorize(labels)
    cc, cu = pd.factorize(contexts)
    code = pc * len(cu) + cc
    counts = np.bincount(code, minlength=len(pu) * len(cu))
    found = np.flatnonzero(counts)
    counts = pd.Series(counts[found], index=pd.MultiIndex.from_arrays(
        [pu[found // len(cu)], cu[found % len(cu)]])).sort_index()
    small = counts[counts < min_cells]
    if len(small):
        names = [f"{p} ({c}): {n}" if c != "all" else f"{p}: {n}" for (p, c), n in small.items()]
        raise InputError(
            f"{len(small)} group(s) in obs[{key!r}] have fewer than {min_cells} cells "
            f"[{preview(names, 5)}]; drop them (drop_small_groups=True / --drop-small-groups) "
            f"or lower min_cells (--min-cells)."
        )


def group_sizes(labels: np.ndarray, contexts: np.ndarray) -> np.ndarray:
    """Cells in each cell's (label, context) group, shape (n_cells,) (integer codes, no
    per-cell strings: cheap at 10^7 cells)."""
    pc, _ = pd.factorize(labels)
    cc, cu = pd.factorize(contexts)
    code = pc * len(cu) + cc
    return np.bincount(code)[code]


def check_not_empty(adata) -> None:
    """Fail when the file has no cells or no genes."""
    if adata.n_obs == 0 or adata.n_vars == 0:
        what = "no cells (obs is empty)" if adata.n_obs == 0 else "no genes (var is empty)"
        raise InputError(f"the data has {what}; pass a file with cells in rows and genes in "
                         f"columns.")


def check_declared_scale(declared: str | None, detected: str) -> None:
    """Fail when a declared input scale contradicts the values (counts must be whole)."""
    if declared is None or declared == detected:
        return
    if declared == "counts" or detected == "counts":
        raise InputError(
            f"input_scale={declared!r} but the values look like {detected} "
            f"({'whole numbers' if detected == 'counts' else 'not whole numbers'}); "
            f"omit input_scale to detect it, or pass the matrix that holds {declared}."
        )



OTHER_SEPARATORS = ("|", ";", ",", "&", "~")


def check_label_text(labels: np.ndarray, separator: str, key: str) -> None:
    """Fail on labels with stray whitespace; warn when combos seem joined by another separator."""
    values = [str(v) for v in pd.unique(labels)]
    stray = [v for v in values if v != v.strip() or f" {separator}" in v or f"{separator} " in v]
    if stray:
        raise InputError(
            f"obs[{key!r}] has labels with stray whitespace ({preview(map(repr, stray), 5)}); "
            f"strip them (adata.obs[{key!r}] = adata.obs[{key!r}].str.strip()) and save again."
        )
    if any(separator in v for v in values):
        return
    for other in OTHER_SEPARATORS:
        joined = [v for v in values if other in v]
        if joined:
            warnings.warn(
                f"obs[{key!r}] labels contain {other!r} (e.g. {joined[0]!r}) but combinations "
                f"are joined by {separator!r}; they are read as single perturbations. Pass "
                f"separator={other!r} if they are combinations.",
                stacklevel=3,
            )
            return


def _shell(text: str) -> str:
    """``text`` quoted for a shell command line when it holds spaces or quotes."""
    return repr(text) if any(c in text for c in " '\"") else text
