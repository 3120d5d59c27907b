"""Set loader speed from a store on disk vs the sequential-read limit of the same bytes.

Synthetic store: 500k cells x 2,000 genes, ~6% non-zero (Poisson(120) values per cell; gene
indices random per cell, unsorted: the loader never looks at them), 100 perturbations x 2
contexts x 2 batches (~1,100 cells each) + controls, written directly as the store's arrays
(vectorised). Sets of 256, 512 and 1,024 cells (+ as many matched controls) are read with
:class:`~perturbcast.data.store_sampler.StoreSetSampler` as CSR batches (densifying them is
the consumer's job, on the accelerator). In the same run: the sequential-read limit (reading
indptr/indices/data front to back in 64 MiB blocks) and anndata backed reads of the same
runs of rows from an h5ad of the same matrix, and (when zarr is installed) from zarr v3
sharded arrays of the same values.

Page cache: this machine does not allow ``/proc/sys/vm/drop_caches`` (not root), so the store
files are evicted with ``posix_fadvise(DONTNEED)`` before each cold measurement; warm
figures (files cached) are reported too.

    OMP_NUM_THREADS=1 python benchmarks/loader.py [--cells 500000] [--seconds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from perturbcast.data.store import STORE_FORMAT, STORE_VERSION
from perturbcast.data.store_sampler import StoreSetSampler

FILES = ("indptr.npy", "indices.npy", "data.npy")


def build_store(path: Path, n_cells: int, n_genes: int, density: float, seed: int = 0) -> int:
    """Write a synthetic store; returns its nnz."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True)
    n_pert, contexts, batches = 100, ("c0", "c1"), ("b0", "b1")
    n_ctrl = n_cells // 10
    keys = [(c, b, "control") for c in contexts for b in batches]
    keys += [(c, b, f"P{p:04d}") for c in contexts for b in batches for p in range(n_pert)]
    keys = sorted(keys)
    per_ctrl, per_pert = n_ctrl // 4, (n_cells - n_ctrl) // (len(keys) - 4)
    sizes = np.array([per_ctrl if k[2] == "control" else per_pert for k in keys])
    sizes[-1] += n_cells - sizes.sum()
    nnz_row = rng.poisson(density * n_genes, n_cells).astype(np.int64)
    indptr = np.zeros(n_cells + 1, np.int64)
    np.cumsum(nnz_row, out=indptr[1:])
    nnz = int(indptr[-1])
    np.save(path / "indptr.npy", indptr)
    ind = np.lib.format.open_memmap(path / "indices.npy", "w+", np.int32, (nnz,))
    dat = np.lib.format.open_memmap(path / "data.npy", "w+", np.float32, (nnz,))
    step = 1 << 24
    for s in range(0, nnz, step):
        e = min(s + step, nnz)
        ind[s:e] = rng.integers(0, n_genes, e - s, dtype=np.int32)
        dat[s:e] = rng.random(e - s, dtype=np.float32) * 3
    ind.flush()
    dat.flush()
    del ind, dat
    stop = np.cumsum(sizes)
    groups = pd.DataFrame(keys, columns=["context", "batch", "perturbation"])
    groups["start"], groups["stop"] = stop - sizes, stop
    groups.to_csv(path / "groups.csv", index=False)
    info = {"format": STORE_FORMAT, "version": STORE_VERSION, "n_cells": n_cells, "nnz": nnz,
            "genes": [f"g{i}" for i in range(n_genes)], "perturbation_key": "perturbation",
            "control": "control", "context_key": "context", "batch_key": "batch",
            "normalization": {"kind": "synthetic"}, "sources": []}
    (path / "store.json").write_text(json.dumps(info))
    return nnz


def evict(path: Path) -> None:
    """Drop the store files from the page cache (posix_fadvise DONTNEED; no root needed)."""
    for name in FILES:
        fd = os.open(path / name, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def sequential_read(path: Path) -> tuple[float, int]:
    """Seconds and bytes to read the store's arrays front to back in 64 MiB blocks."""
    buf = bytearray(64 << 20)
    total, t0 = 0, time.perf_counter()
    for name in FILES:
        with open(path / name, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return time.perf_counter() - t0, total


def sampler_speed(path: Path, seconds: float, n_sets: int = 4) -> dict[str, float]:
    """Sets/s, cells/s and bytes/s of StoreSetSampler with sets of 256, 512, 1024 cells."""
    sets = cells = nbytes = 0
    t0 = time.perf_counter()
    for size in (256, 512, 1024):
        smp = StoreSetSampler(path, set_size=size, n_sets=n_sets, seed=size)
        end = time.perf_counter() + seconds / 3
        i = 0
        while time.perf_counter() < end and i < smp.n_batches(0):
            b = smp.batch(0, i)
            i += 1
            for part in (b["pert"], b["ctrl"]):
                cells += part.rows.size
                nbytes += part.data.nbytes + part.indices.nbytes + part.ptr.nbytes
            sets += n_sets
    dt = time.perf_counter() - t0
    return {"sets_s": sets / dt, "cells_s": cells / dt, "bytes_s": nbytes / dt}


def anndata_backed_speed(path: Path, h5ad: Path, seconds: float) -> float:
    """Cells/s of anndata backed reads of random runs of 256-1024 rows (CSR h5ad)."""
    import anndata as ad
    import scipy.sparse as sp

    if not h5ad.exists():
        indptr = np.load(path / "indptr.npy")
        ind, dat = (np.load(path / f, mmap_mode="r") for f in FILES[1:])
        n_genes = len(json.loads((path / "store.json").read_text())["genes"])
        x = sp.csr_matrix((np.asarray(dat), np.asarray(ind), indptr),
                          shape=(indptr.size - 1, n_genes))
        ad.AnnData(X=x).write_h5ad(h5ad)
        del x
    a = ad.read_h5ad(h5ad, backed="r")
    rng = np.random.default_rng(0)
    cells, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        size = int(rng.choice([256, 512, 1024]))
        s = int(rng.integers(0, a.n_obs - size))
        cells += a.X[s: s + size].shape[0]
    return cells / (time.perf_counter() - t0)


def zarr_speed(path: Path, seconds: float) -> float | None:
    """Cells/s reading the same runs of rows from zarr v3 sharded arrays (uncompressed, chunks
    of 64k values, shards of 4M) instead of the memory maps; None without zarr."""
    try:
        import zarr
    except ImportError:
        return None
    indptr = np.load(path / "indptr.npy")
    arrays = {}
    for name in FILES[1:]:
        src = np.load(path / name, mmap_mode="r")
        z = zarr.create_array(store=str(path / f"{name}.zarr"), shape=src.shape,
                              dtype=src.dtype, chunks=(1 << 16,), shards=(1 << 22,),
                              compressors=None)
        for s in range(0, src.size, 1 << 24):
            z[s: s + (1 << 24)] = src[s: s + (1 << 24)]
        arrays[name] = zarr.open_array(str(path / f"{name}.zarr"))
    rng = np.random.default_rng(0)
    cells, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        size = int(rng.choice([256, 512, 1024]))
        r = int(rng.integers(0, indptr.size - 1 - size))
        a, b = int(indptr[r]), int(indptr[r + size])
        for z in arrays.values():
            z[a:b]
        cells += size
    return cells / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=500_000)
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--density", type=float, default=0.06)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--dir", default=None, help="Work folder (default: a temp folder).")
    args = ap.parse_args()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = Path(tmp) / "store"
        t0 = time.perf_counter()
        nnz = build_store(store, args.cells, args.genes, args.density)
        print(f"built store: {args.cells} cells x {args.genes} genes, {nnz / args.cells:.0f} "
              f"values/cell ({nnz / args.cells / args.genes:.1%}), "
              f"{sum((store / f).stat().st_size for f in FILES) / 1e9:.2f} GB "
              f"in {time.perf_counter() - t0:.1f}s")
        bytes_per_cell = sum((store / f).stat().st_size for f in FILES) / args.cells
        evict(store)
        dt, nbytes = sequential_read(store)
        seq_cold = nbytes / dt
        dt, nbytes = sequential_read(store)
        seq_warm = nbytes / dt
        evict(store)
        cold = sampler_speed(store, args.seconds)
        warm = sampler_speed(store, args.seconds)
        backed = anndata_backed_speed(store, Path(tmp) / "same.h5ad", args.seconds / 2)
        zarr_cells = zarr_speed(store, args.seconds / 2)
    rows = [("sequential read, cold", seq_cold, seq_cold / bytes_per_cell),
            ("sequential read, warm", seq_warm, seq_warm / bytes_per_cell),
            ("StoreSetSampler, cold", cold["bytes_s"], cold["cells_s"]),
            ("StoreSetSampler, warm", warm["bytes_s"], warm["cells_s"]),
            ("anndata backed runs, warm", backed * bytes_per_cell, backed)]
    if zarr_cells is not None:
        rows.append(("zarr v3 sharded runs, warm", zarr_cells * bytes_per_cell, zarr_cells))
    print(f"{'reader':28s} {'MB/s':>9s} {'cells/s':>12s}")
    for name, b, c in rows:
        print(f"{name:28s} {b / 1e6:9.0f} {c:12,.0f}")
    print(f"sampler sets/s: cold {cold['sets_s']:.0f}, warm {warm['sets_s']:.0f} "
          f"(sets of 256/512/1024 cells, each + a matched control set)")
    print(f"page cache: files evicted with posix_fadvise(DONTNEED) before cold runs "
          f"(drop_caches needs root); total {time.perf_counter() - t_start:.0f}s")
    print(f"cells={args.cells} genes={args.genes} sets_per_s={warm['sets_s']:.0f} "
          f"cells_per_s={warm['cells_s']:.0f} cells_per_s_cold={cold['cells_s']:.0f} "
          f"seq_limit_cells_per_s={seq_warm / bytes_per_cell:.0f} "
          f"seq_limit_cold_cells_per_s={seq_cold / bytes_per_cell:.0f} "
          f"frac_of_limit={warm['bytes_s'] / seq_warm:.2f} "
          f"frac_of_limit_cold={cold['bytes_s'] / seq_cold:.2f} "
          f"anndata_backed_cells_per_s={backed:.0f} "
          f"zarr_sharded_cells_per_s={zarr_cells or float('nan'):.0f}")


if __name__ == "__main__":
    main()
