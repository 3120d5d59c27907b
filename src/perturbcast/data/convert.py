"""Stream h5ad files into a group-sorted store (see :mod:`perturbcast.data.store`).

Two passes over each file, ``chunk_size`` rows at a time, so peak memory is bounded by one
chunk plus per-cell bookkeeping (obs and two int64 arrays), whatever the size of ``X``:

1. read obs, detect the input scale, and count each row's stored values after
   normalisation and gene alignment; this fixes every group's slot and every row's offset;
2. read the rows again, normalise them, align their genes and write each row into its slot
   of the memory-mapped CSR arrays.

Cells are sorted by (context, batch, perturbation); inside a group their order is shuffled
by ``seed``, so any contiguous run of a group is a random sample of it.
"""

from __future__ import annotations

import json
import mmap
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from ..utils import atomic_path
from . import validate
from .experiment import NO_CONTEXT
from .preprocess import TARGET_SUM, detect_scale, normalize_log1p
from .store import RELEASE_BYTES, STORE_FORMAT, STORE_VERSION

NO_BATCH = "all"


def convert(inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
            perturbation_key: str, control: str, context_key: str | None = None,
            batch_key: str | None = None, join: str = "inner", chunk_size: int = 16384,
            seed: int = 0) -> Path:
    """Convert h5ad files into one store at ``out`` (written atomically).

    Parameters
    ----------
    inputs : h5ad paths; their genes are aligned by name
    out : store directory to write (replaced if it exists)
    perturbation_key, control, context_key, batch_key : obs columns / control label
    join : "inner" keeps genes measured in every file; "outer" keeps the union, and the
        genes a file lacks are stored as zeros for its cells and listed per file in
        ``store.json`` (``sources[i].missing_genes``), with a warning
    chunk_size : rows read at a time
    seed : shuffles cells inside each group

    Returns
    -------
    Path of the store.
    """
    if join not in ("inner", "outer"):
        raise InputError(f"join={join!r} is not one of inner, outer.")
    if not inputs:
        raise InputError("convert needs at least one input .h5ad file.")
    files = [_open_backed(p) for p in inputs]
    genes = _align_genes([f.var_names.astype(str) for f in files], join, inputs)
    obs, sources = [], []
    for i, (path, a) in enumerate(zip(inputs, files, strict=True)):
        for key, opt in ((perturbation_key, "--perturbation-key"), (context_key, "--context-key"),
                         (batch_key, "--batch-key")):
            validate.check_obs_column(a.obs, key, opt)
        names = a.var_names.astype(str)
        missing = sorted(set(genes) - set(names))
        if missing:
            warnings.warn(f"{len(missing)} of {len(genes)} genes are absent from {path}; they "
                          f"are stored as zeros for its cells and listed in store.json "
                          f"sources[{i}].missing_genes.", stacklevel=2)
        sources.append({"path": str(Path(path).resolve()), "n_cells": int(a.n_obs),
                        "input_scale": detect_scale(a.X[: min(a.n_obs, 2000)]),
                        "missing_genes": missing})
        o = a.obs.copy()
        o["source"], o["source_row"] = i, np.arange(a.n_obs)
        o["obs_name"] = a.obs_names.astype(str)
        obs.append(o)
    obs = pd.concat(obs, ignore_index=True)
    validate.check_control(obs[perturbation_key].astype(str).to_numpy(), control,
                           perturbation_key)
    if not obs["obs_name"].is_unique:
        obs["obs_name"] = obs["obs_name"] + "-" + obs["source"].astype(str)
        warnings.warn("cell names repeat across input files; store cells are named "
                      "NAME-<file index>.", stacklevel=2)

    # pass 1: stored values per row (after normalisation and alignment)
    col_maps = [_col_map(f.var_names.astype(str), genes) for f in files]
    nnz = np.concatenate([np.concatenate([np.diff(blk.indptr) for blk in
                                          _blocks(f, s["input_scale"], cm, len(genes), chunk_size)]
                                         or [np.zeros(0, np.int64)])
                          for f, s, cm in zip(files, sources, col_maps, strict=True)])
    codes, groups = _group_codes(obs, context_key, batch_key, perturbation_key)
    perm = np.random.default_rng(seed).permutation(len(obs))
    order = perm[np.argsort(codes[perm], kind="stable")]  # store row -> input cell
    dest = np.empty(len(obs), np.int64)
    dest[order] = np.arange(len(obs))                        # input cell -> store row
    indptr = np.zeros(len(obs) + 1, np.int64)
    np.cumsum(nnz[order], out=indptr[1:])
    counts = np.bincount(codes, minlength=len(groups))
    groups["stop"] = np.cumsum(counts)
    groups["start"] = groups["stop"] - counts

    out = Path(out)
    with atomic_path(out, is_dir=True) as tmp:
        np.save(tmp / "indptr.npy", indptr)
        total = int(indptr[-1])
        indices = np.lib.format.open_memmap(tmp / "indices.npy", "w+", np.int32, (total,))
        data = np.lib.format.open_memmap(tmp / "data.npy", "w+", np.float32, (total,))
        offset = written = 0
        for f, s, cm in zip(files, sources, col_maps, strict=True):  # pass 2: write the rows
            for blk in _blocks(f, s["input_scale"], cm, len(genes), chunk_size):
                rows = dest[offset: offset + blk.shape[0]]
                lens = np.diff(blk.indptr)
                pos = np.repeat(indptr[rows] - blk.indptr[:-1], lens) + np.arange(blk.nnz)
                indices[pos] = blk.indices
                data[pos] = blk.data
                offset += blk.shape[0]
                written += 8 * blk.nnz + 16384 * blk.shape[0]  # scattered rows: ~4 pages each
                if written >= RELEASE_BYTES:  # unmap written pages (kept, dirty, in the page
                    written = 0               # cache): RSS stays flat with the store's size
                    for m in (indices, data):
                        m._mmap.madvise(mmap.MADV_DONTNEED)
        indices.flush()
        data.flush()
        del indices, data
        _write_obs(obs.iloc[order].reset_index(drop=True), tmp / "obs.parquet")
        groups[["context", "batch", "perturbation", "start", "stop"]].to_csv(
            tmp / "groups.csv", index=False)
        info = {"format": STORE_FORMAT, "version": STORE_VERSION, "n_cells": int(len(obs)),
                "nnz": total, "genes": list(genes), "join": join,
                "perturbation_key": perturbation_key, "control": control,
                "context_key": context_key, "batch_key": batch_key, "seed": seed,
                "normalization": {"kind": "log1p", "target_sum": TARGET_SUM,
                                  "note": "counts and normalised inputs: total 1e4 over the "
                                          "file's own genes, then log1p; log1p inputs as is"},
                "sources": sources}
        (tmp / "store.json").write_text(json.dumps(info, indent=1))
    for f in files:
        f.file.close()
    return out


def _group_codes(obs: pd.DataFrame, context_key, batch_key, perturbation_key):
    """Group id per cell, shape (n_cells,), and the group table (context, batch,
    perturbation), sorted; built from per-column codes (no per-cell tuples)."""
    levels, col_codes = [], []
    for key, default in ((context_key, NO_CONTEXT), (batch_key, NO_BATCH),
                         (perturbation_key, None)):
        if key is None:
            col_codes.append(np.zeros(len(obs), np.int64))
            levels.append(np.array([default], dtype=object))
            continue
        c, u = pd.factorize(obs[key].astype(str).to_numpy(), sort=True)
        col_codes.append(c.astype(np.int64))
        levels.append(np.asarray(u, dtype=object))
    dims = [len(u) for u in levels]
    combined = np.ravel_multi_index(col_codes, dims)
    used, codes = np.unique(combined, return_inverse=True)
    parts = np.unravel_index(used, dims)
    groups = pd.DataFrame({name: lev[part] for name, lev, part in
                           zip(("context", "batch", "perturbation"), levels, parts, strict=True)})
    return codes.ravel(), groups


def _open_backed(path) -> ad.AnnData:
    if not Path(path).exists():
        raise InputError(f"file not found: {path}; check the input paths of convert.")
    try:
        a = ad.read_h5ad(path, backed="r")
    except Exception as exc:  # noqa: BLE001 - any reader failure is a user input problem
        raise InputError(f"could not read {path} as h5ad ({type(exc).__name__}); is it an "
                         f"AnnData file?") from exc
    if not a.var_names.is_unique:
        raise InputError(f"duplicate gene names in {path}; call adata.var_names_make_unique() "
                         f"and save again.")
    return a


def _align_genes(names: list[pd.Index], join: str, inputs) -> list[str]:
    genes = list(names[0])
    for n in names[1:]:
        if join == "inner":
            keep = set(n)
            genes = [g for g in genes if g in keep]
        else:
            seen = set(genes)
            genes += [g for g in n if g not in seen]
    if not genes:
        raise InputError(f"the input files share no gene names ({len(inputs)} files); use "
                         f"--join outer or files measured on the same genes.")
    return genes


def _col_map(names: pd.Index, genes: list[str]) -> np.ndarray:
    """Store column of each of a file's genes (-1: dropped by an inner join)."""
    pos = {g: i for i, g in enumerate(genes)}
    return np.array([pos.get(g, -1) for g in names], np.int64)


def _blocks(a: ad.AnnData, scale: str, col_map: np.ndarray, n_out: int, chunk: int):
    """Yield normalised, gene-aligned CSR blocks, shape (<= chunk, n_out), float32."""
    keep = np.flatnonzero(col_map >= 0)
    for start in range(0, a.n_obs, chunk):
        x = a.X[start: min(start + chunk, a.n_obs)]
        x = sp.csr_matrix(x, dtype=np.float32) if not sp.issparse(x) else x.tocsr()
        validate.check_values(x, "X")
        x = sp.csr_matrix(normalize_log1p(x.astype(np.float32), scale))
        x = x[:, keep]
        x = sp.csr_matrix((x.data, col_map[keep][x.indices], x.indptr),
                          shape=(x.shape[0], n_out))
        x.eliminate_zeros()
        x.sort_indices()
        yield x


def _write_obs(obs: pd.DataFrame, path: Path) -> None:
    for c in obs.columns:
        if obs[c].dtype == object:
            obs[c] = obs[c].astype(str)
    obs.to_parquet(path)
