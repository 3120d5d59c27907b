"""Append cells to an .h5ad file block by block, in AnnData's on-disk format.

At most one block plus a write buffer (``buffer_bytes``) is in memory. ``X`` is a dense
float32 dataset with resizable, chunked rows; ``obs`` holds categorical columns whose
categories are known up front (their codes are appended) and a streamed index.
``anndata.read_h5ad`` reads the result, also with ``backed='r'``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy as np

_STR = h5py.string_dtype("utf-8")
_ARRAY = {"encoding-type": "array", "encoding-version": "0.2.0"}
_STRINGS = {"encoding-type": "string-array", "encoding-version": "0.2.0"}
_DICT = {"encoding-type": "dict", "encoding-version": "0.1.0"}


def _set_attrs(obj: h5py.HLObject, attrs: Mapping[str, Any]) -> None:
    for k, v in attrs.items():
        obj.attrs[k] = v


def _strings(group: h5py.Group, name: str, values: Sequence[str], resizable: bool) -> h5py.Dataset:
    data = np.asarray([str(v) for v in values], dtype=object)
    ds = group.create_dataset(name, data=data, dtype=_STR, maxshape=(None,) if resizable else None,
                              chunks=(4096,) if resizable else None)
    _set_attrs(ds, _STRINGS)
    return ds


def _append(ds: h5py.Dataset, values: np.ndarray) -> None:
    start = ds.shape[0]
    ds.resize(start + values.shape[0], axis=0)
    ds[start:] = values


class StreamingH5ad:
    """An .h5ad opened for appending rows.

    Parameters
    ----------
    path : file to create (overwritten)
    genes : var names, shape (n_genes,)
    categories : obs column name -> its categories (in order); every appended block gives one
        code per column
    uns : small JSON-like metadata written to ``uns`` (via anndata's own writer)
    chunk_bytes : target size of one HDF5 chunk of X
    buffer_bytes : appended blocks are gathered up to this size and written together (few
        large writes are much faster than many small ones)
    """

    def __init__(self, path: str | os.PathLike, genes: Sequence[str],
                 categories: Mapping[str, Sequence[str]], uns: Mapping[str, Any] | None = None,
                 chunk_bytes: int = 1 << 20, buffer_bytes: int = 8 << 20) -> None:
        try:
            from anndata.io import write_elem
        except ImportError:  # anndata < 0.11 keeps it in experimental
            from anndata.experimental import write_elem

        self.n_genes = len(genes)
        self.n_obs = 0
        self.buffer_bytes = buffer_bytes
        self._pending: list[tuple[np.ndarray, dict[str, int]]] = []
        self._pending_bytes = 0
        self.file = h5py.File(path, "w")
        f = self.file
        _set_attrs(f, {"encoding-type": "anndata", "encoding-version": "0.1.0"})
        rows = max(1, min(65536, chunk_bytes // max(1, 4 * self.n_genes)))
        self.x = f.create_dataset("X", shape=(0, self.n_genes), dtype=np.float32,
                                  maxshape=(None, self.n_genes), chunks=(rows, self.n_genes))
        _set_attrs(self.x, _ARRAY)
        obs = f.create_group("obs")
        _set_attrs(obs, {"_index": "_index", "column-order": np.asarray(list(categories), object),
                         "encoding-type": "dataframe", "encoding-version": "0.2.0"})
        self.index = _strings(obs, "_index", [], resizable=True)
        self.codes: dict[str, h5py.Dataset] = {}
        for name, cats in categories.items():
            grp = obs.create_group(name)
            _set_attrs(grp, {"encoding-type": "categorical", "encoding-version": "0.2.0",
                             "ordered": False})
            _strings(grp, "categories", cats, resizable=False)
            dtype = np.int16 if len(cats) < np.iinfo(np.int16).max else np.int32
            self.codes[name] = grp.create_dataset("codes", shape=(0,), dtype=dtype,
                                                  maxshape=(None,), chunks=(65536,))
            _set_attrs(self.codes[name], _ARRAY)
        var = f.create_group("var")
        _set_attrs(var, {"_index": "_index", "column-order": np.zeros(0, np.float64),
                         "encoding-type": "dataframe", "encoding-version": "0.2.0"})
        _strings(var, "_index", genes, resizable=False)
        write_elem(f, "uns", dict(uns or {}))
        for name in ("obsm", "varm", "obsp", "varp", "layers"):
            _set_attrs(f.create_group(name), _DICT)

    def append(self, x: np.ndarray, codes: Mapping[str, int]) -> None:
        """Append a block of cells that share one code per obs column.

        Parameters
        ----------
        x : ndarray, shape (n, n_genes), cast to float32
        codes : obs column -> category code of every cell of the block
        """
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_genes:
            raise ValueError(f"block of shape {x.shape} does not have {self.n_genes} genes")
        self._pending.append((x, dict(codes)))
        self._pending_bytes += x.nbytes
        if self._pending_bytes >= self.buffer_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the gathered blocks (obs names are ``cell{row number}``)."""
        if not self._pending:
            return
        sizes = [x.shape[0] for x, _ in self._pending]
        n = sum(sizes)
        _append(self.x, np.concatenate([x for x, _ in self._pending]))
        for name, ds in self.codes.items():
            _append(ds, np.repeat(np.asarray([c[name] for _, c in self._pending], ds.dtype),
                                  sizes))
        names = np.asarray([f"cell{i}" for i in range(self.n_obs, self.n_obs + n)], object)
        _append(self.index, names)
        self.n_obs += n
        self._pending, self._pending_bytes = [], 0

    def close(self) -> None:
        """Flush and close (a no-op when already closed)."""
        if self.file.id.valid:
            self.flush()
            self.file.close()

    def __enter__(self) -> StreamingH5ad:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is not None:  # failed: drop what is pending, the file is discarded
            self._pending = []
        self.close()
