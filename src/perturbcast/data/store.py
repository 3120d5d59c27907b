"""A group-sorted, out-of-core cell store: CSR arrays as raw memory-mapped ``.npy`` files.

Layout of a store directory (written by :func:`perturbcast.data.convert.convert`)::

    store.json    format, genes, keys, normalisation, source files (+ genes missing in each)
    groups.csv    context, batch, perturbation, start, stop: each group's rows are contiguous
    obs.parquet   every obs column of the sources (+ ``source``, ``source_row``), store order
    indptr.npy    int64, shape (n_cells + 1,)
    indices.npy   int32, shape (nnz,): gene index of each stored value
    data.npy      float32, shape (nnz,): log1p(total 1e4) expression

Why raw ``.npy`` memory maps and not zarr: a set is a contiguous run of rows, i.e. one slice
of ``indices`` and ``data``; a memory map returns it with no chunk lookup, decompression or
copy, at page-cache / disk speed (``benchmarks/loader.py`` measures it against the
sequential-read limit of the same bytes). Compression would trade that speed for disk space.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from ..errors import InputError

STORE_FORMAT = "perturbcast-store"
RELEASE_BYTES = 128 << 20  # see StoreMatrix.note_read
STORE_VERSION = 1


def is_store(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory holding a perturbcast store."""
    return Path(path).is_dir() and (Path(path) / "store.json").exists()


def gather_csr(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, rows: np.ndarray):
    """CSR pieces of ``rows`` (any order) from (memory-mapped) CSR arrays.

    Returns
    -------
    ptr : int64, shape (len(rows) + 1,); ind : int32, shape (nnz,); val : float32, shape (nnz,)
    """
    rows = np.asarray(rows, np.int64)
    starts = np.asarray(indptr[rows], np.int64)
    lens = np.asarray(indptr[rows + 1], np.int64) - starts
    ptr = np.zeros(rows.size + 1, np.int64)
    np.cumsum(lens, out=ptr[1:])
    if rows.size and np.all(rows[1:] == rows[:-1] + 1):  # one contiguous run: plain slices
        a, b = int(starts[0]), int(starts[0] + ptr[-1])
        return ptr, np.asarray(indices[a:b]), np.asarray(data[a:b])
    pos = np.repeat(starts - ptr[:-1], lens) + np.arange(ptr[-1])
    return ptr, np.asarray(indices[pos]), np.asarray(data[pos])


def _runs(idx: np.ndarray) -> int:
    """Number of runs of consecutive values in ``idx`` (each run faults its own pages)."""
    idx = np.asarray(idx)
    return int(idx.size and 1 + np.count_nonzero(np.diff(idx) != 1))


def csr_to_dense(ptr: np.ndarray, ind: np.ndarray, val: np.ndarray, n_cols: int,
                 cols: np.ndarray | None = None) -> np.ndarray:
    """Dense float32 rows, shape (len(ptr) - 1, n_cols or len(cols)), from CSR pieces."""
    n = ptr.size - 1
    row = np.repeat(np.arange(n), np.diff(ptr))
    if cols is None:
        out = np.zeros((n, n_cols), np.float32)
        out[row, ind] = val
        return out
    colmap = np.full(n_cols, -1, np.int64)
    colmap[cols] = np.arange(cols.size)
    new = colmap[ind]
    keep = new >= 0
    out = np.zeros((n, cols.size), np.float32)
    out[row[keep], new[keep]] = val[keep]
    return out


_MAPS: dict[tuple, dict] = {}


def _shared_maps(path: Path) -> dict:
    """One set of memory maps per store files and process, shared by every
    :class:`StoreMatrix` view of them (so releasing pages releases all of them): plain ndarray
    views of the maps (slicing them skips np.memmap's per-slice bookkeeping), the mmap objects
    and a count of bytes read since the last release. Keyed by the files' identity, so a store
    written again at the same path is mapped afresh."""
    stats = [(path / f"{name}.npy").stat() for name in ("indptr", "indices", "data")]
    key = (str(path.resolve()), os.getpid(), *((st.st_ino, st.st_mtime_ns) for st in stats))
    if key not in _MAPS:
        _MAPS.clear()  # one store at a time is kept mapped (earlier views keep their own)
        maps = [np.load(path / f"{name}.npy", mmap_mode="r")
                for name in ("indptr", "indices", "data")]
        _MAPS[key] = {"arrays": tuple(np.asarray(m) for m in maps),
                      "mmaps": [m._mmap for m in maps if getattr(m, "_mmap", None) is not None],
                      "read": 0}
    return _MAPS[key]


class StoreMatrix:
    """Matrix backend of an :class:`~perturbcast.data.Experiment` read from a store.

    Rows are read on demand from the memory maps; ``row_map`` / ``cols`` make cheap views
    (subsets of cells / genes) without copying anything.

    Parameters
    ----------
    path : store directory
    row_map : int array, shape (n_rows,), optional: store row of each row of this view
    cols : int array, shape (n_cols,), optional: store gene of each column of this view
    """

    isbacked = True

    def __init__(self, path: str | os.PathLike, row_map: np.ndarray | None = None,
                 cols: np.ndarray | None = None) -> None:
        self.path = Path(path)
        self.info = json.loads((self.path / "store.json").read_text())
        self._maps = _shared_maps(self.path)
        self.indptr, self.indices, self.data = self._maps["arrays"]
        self.n_store_genes = len(self.info["genes"])
        self.row_map, self.cols = row_map, cols

    def __reduce__(self):
        """Pickle as (path, views): DataLoader workers started with "spawn" reopen the memory
        maps instead of receiving a copy of the arrays."""
        return StoreMatrix, (self.path, self.row_map, self.cols)

    @property
    def shape(self) -> tuple[int, int]:
        n = self.indptr.size - 1 if self.row_map is None else self.row_map.size
        return n, self.n_store_genes if self.cols is None else self.cols.size

    def store_rows(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, np.int64)
        return idx if self.row_map is None else self.row_map[idx]

    def csr_rows(self, idx: np.ndarray):
        """CSR pieces (ptr, indices, data) of rows ``idx`` in store gene space."""
        rows = self.store_rows(idx)
        out = gather_csr(self.indptr, self.indices, self.data, rows)
        # a page fault maps up to 64 KB of cached neighbours ("fault-around") in each of the
        # 3 arrays, so each run of consecutive rows counts that much on top of its bytes
        self.note_read(8 * out[1].size + 3 * 65536 * _runs(rows))
        return out

    def note_read(self, nbytes: int) -> None:
        """Count bytes read through the maps; every ``RELEASE_BYTES``, drop this process's
        mapped pages of the store (``madvise(MADV_DONTNEED)``). They stay in the page cache
        (touching them again is a minor fault, not a disk read) but leave this process's
        resident set, which then stays flat however much of the store a pass reads."""
        maps = self._maps
        maps["read"] += nbytes
        if maps["read"] >= RELEASE_BYTES:
            maps["read"] = 0
            for m in maps["mmaps"]:
                m.madvise(mmap.MADV_DONTNEED)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Dense float32 rows ``idx``, shape (len(idx), n_cols)."""
        return csr_to_dense(*self.csr_rows(idx), self.n_store_genes, self.cols)

    def sparse_rows(self, idx: np.ndarray):
        """Rows ``idx`` as a scipy CSR matrix, shape (len(idx), n_cols) (copied off the maps)."""
        import scipy.sparse as sp

        ptr, ind, val = self.csr_rows(idx)
        x = sp.csr_matrix((np.array(val), np.array(ind), np.array(ptr)),
                          shape=(ptr.size - 1, self.n_store_genes))
        return x if self.cols is None else x[:, self.cols]

    def subset(self, idx: np.ndarray) -> StoreMatrix:
        """View on rows ``idx`` of this view."""
        return StoreMatrix(self.path, self.store_rows(idx), self.cols)

    def select_columns(self, cols: np.ndarray) -> StoreMatrix:
        """View on columns ``cols`` of this view."""
        base = np.arange(self.n_store_genes) if self.cols is None else self.cols
        return StoreMatrix(self.path, self.row_map, base[np.asarray(cols)])


def open_store(path: str | os.PathLike) -> tuple[StoreMatrix, ad.AnnData, pd.DataFrame]:
    """Open a store: its matrix backend, an obs-only AnnData (X is None) and the group table."""
    path = Path(path)
    if not is_store(path):
        raise InputError(f"{path} is not a perturbcast store (no store.json); create one with "
                         f"`perturbcast convert IN.h5ad ... --out {path}`.")
    matrix = StoreMatrix(path)
    if matrix.info.get("format") != STORE_FORMAT or matrix.info.get("version") != STORE_VERSION:
        raise InputError(f"{path}/store.json is not a version-{STORE_VERSION} perturbcast store; "
                         f"convert the h5ad files again with this perturbcast.")
    obs = read_obs(path)
    var = pd.DataFrame(index=pd.Index(matrix.info["genes"], dtype=str))
    with _names_known_unique():
        adata = ad.AnnData(obs=obs, var=var)
    return matrix, adata, read_groups(path)


@contextlib.contextmanager
def _names_known_unique():
    """Skip AnnData's check that obs / var names are unique while a store's AnnData is made:
    convert made cell names unique and genes are unique by construction, and the check hashes
    every name as a Python string (a ~1 GB transient at 10^7 cells)."""
    check = ad.AnnData._check_uniqueness
    ad.AnnData._check_uniqueness = lambda self: None
    try:
        yield
    finally:
        ad.AnnData._check_uniqueness = check


def read_obs(path: str | os.PathLike) -> pd.DataFrame:
    """The store's obs, indexed by cell name. Names are kept as one Arrow string buffer
    (~10 bytes a cell instead of ~60 for Python strings) and Arrow's memory pool is emptied
    after the conversion, so a 10^7-cell store's obs costs hundreds of MB, not GBs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(Path(path) / "obs.parquet")
    names = table.column("obs_name").cast(pa.string())
    obs = table.drop_columns(["obs_name"]).to_pandas()
    obs.index = pd.Index(pd.arrays.ArrowStringArray(names.combine_chunks()))
    del table, names
    pa.default_memory_pool().release_unused()
    return obs


def read_groups(path: str | os.PathLike) -> pd.DataFrame:
    """The group table of a store: context, batch, perturbation, start, stop (row ranges)."""
    return pd.read_csv(Path(path) / "groups.csv", keep_default_na=False,
                       dtype={"context": str, "batch": str, "perturbation": str})


def store_cells(path: str | os.PathLike, keep: dict[str, set[str]]) -> ad.AnnData:
    """Some cells of a store in memory, e.g. the real cells of the predicted conditions and
    their contexts' controls, without loading the rest.

    Parameters
    ----------
    path : store directory
    keep : {obs column: allowed values}; a cell is kept when every column matches

    Returns
    -------
    AnnData, shape (n_kept, n_genes): X a writable CSR matrix (float32, log1p as stored), obs
    the store's columns indexed by cell name, in store order
    """

    matrix, adata, _ = open_store(path)
    sel = np.ones(adata.n_obs, bool)
    for col, values in keep.items():
        if col not in adata.obs:
            raise InputError(f"obs column {col!r} not found in the store {path}; columns: "
                             f"{', '.join(map(str, adata.obs.columns))}.")
        sel &= adata.obs[col].astype(str).isin(values).to_numpy()
    idx = np.flatnonzero(sel)
    x = matrix.sparse_rows(idx)
    obs = adata.obs.iloc[idx].copy()
    obs.index = obs.index.astype(str)
    return ad.AnnData(X=x, obs=obs, var=adata.var.copy())
