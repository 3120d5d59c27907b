"""Training sets read from a store at disk speed, for DataLoader workers and DDP ranks.

An epoch cuts every perturbed group of the store into runs of ``set_size`` consecutive rows
(from a random offset; a store shuffles cells inside each group, so a run is a random
sample), shuffles those sets by ``(seed, epoch)`` and deals them to ranks (``rank``,
``world_size``; every rank gets the same number) and, inside a rank, whole batches to
DataLoader workers. Each perturbed set gets a matched control set: a random run of the
control group of the same context and batch (else the context's largest control group).
Every read is one contiguous slice of the memory-mapped CSR arrays; batches hold CSR pieces,
densified by the consumer (on the accelerator) with :func:`csr_batch_to_dense`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import InputError
from .sets import MIN_BATCH_CONTROLS
from .store import StoreMatrix, is_store, read_groups


@dataclass
class CSRSets:
    """Sets of cells as CSR pieces: ``n_sets * set_size`` rows, set after set.

    ptr : int64, shape (n_rows + 1,); indices : int32, shape (nnz,); data : float32 (nnz,)
    rows : int64, shape (n_sets, set_size): store row of each cell
    """

    ptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    rows: np.ndarray


def csr_batch_to_dense(ptr: torch.Tensor, indices: torch.Tensor, data: torch.Tensor,
                       n_rows: int, n_genes: int) -> torch.Tensor:
    """Dense (n_rows, n_genes) tensor from CSR pieces, on the device of ``data``."""
    row = torch.repeat_interleave(torch.arange(n_rows, device=data.device), ptr.diff())
    out = torch.zeros(n_rows, n_genes, dtype=data.dtype, device=data.device)
    out[row, indices.long()] = data
    return out


class StoreSetSampler:
    """Plan and read (perturbed set, matched control set) pairs from a store.

    Parameters
    ----------
    path : store directory
    set_size : cells per set; n_sets : sets per batch
    seed : shuffles sets (and offsets) per epoch
    rank, world_size : this process's share of each epoch (DDP); default: from
        ``torch.distributed`` when initialised, else (0, 1)
    """

    def __init__(self, path: str | os.PathLike, set_size: int = 256, n_sets: int = 4,
                 seed: int = 0, rank: int | None = None, world_size: int | None = None) -> None:
        if not is_store(path):
            raise InputError(f"{path} is not a perturbcast store (no store.json); create one "
                             f"with `perturbcast convert`.")
        self.matrix, groups = StoreMatrix(path), read_groups(path)  # no obs: light in workers
        self.set_size, self.n_sets, self.seed = set_size, n_sets, seed
        if rank is None or world_size is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            rank, world_size = (dist.get_rank(), dist.get_world_size()) if ready else (0, 1)
        if not 0 <= rank < world_size:
            raise InputError(f"rank {rank} is not in 0..{world_size - 1}.")
        self.rank, self.world_size = rank, world_size
        self._plan: tuple[int, np.ndarray] = (-1, np.zeros((0, 2), np.int64))
        control = self.matrix.info["control"]
        is_ctrl = (groups.perturbation == control).to_numpy()
        self.groups = groups[~is_ctrl].reset_index(drop=True)
        self.bounds = self.groups[["start", "stop"]].to_numpy(np.int64)
        ctrl = groups[is_ctrl]
        size = (ctrl.stop - ctrl.start).to_numpy()
        by_cb = {(c, b): (s, e) for c, b, s, e in ctrl[["context", "batch", "start", "stop"]]
                 .itertuples(index=False) if e - s >= MIN_BATCH_CONTROLS}
        biggest = {}
        for (c, _b, s, e), n in zip(ctrl[["context", "batch", "start", "stop"]]
                                   .itertuples(index=False), size, strict=True):
            if n > biggest.get(c, (0, 0, -1))[2]:
                biggest[c] = (s, e, n)
        self.ctrl_bounds = np.zeros((len(self.groups), 2), np.int64)
        for i, (c, b) in enumerate(self.groups[["context", "batch"]].itertuples(index=False)):
            if (c, b) in by_cb:
                self.ctrl_bounds[i] = by_cb[(c, b)]
            elif c in biggest:
                self.ctrl_bounds[i] = biggest[c][:2]
            else:
                raise InputError(f"context {c!r} of the store has no control cells; "
                                 f"sets need controls of the same context.")

    @classmethod
    def from_segments(cls, path: str | os.PathLike, segments: pd.DataFrame, set_size: int,
                      n_sets: int, seed: int = 0) -> StoreSetSampler:
        """A sampler over explicit runs of store rows instead of the store's group table.

        ``segments`` has one row per perturbed run: ``start, stop`` (store rows, contiguous)
        and ``ctrl_start, ctrl_stop`` (its matched control run), plus any label columns (kept
        in ``groups``). One global plan (rank 0 of 1): under DDP each rank reads its share of
        every batch (see :meth:`read_sets`)."""
        self = cls.__new__(cls)
        self.matrix = StoreMatrix(path)
        self.set_size, self.n_sets, self.seed = set_size, n_sets, seed
        self.rank, self.world_size = 0, 1
        self._plan = (-1, np.zeros((0, 2), np.int64))
        self.groups = segments.reset_index(drop=True)
        self.bounds = self.groups[["start", "stop"]].to_numpy(np.int64)
        self.ctrl_bounds = self.groups[["ctrl_start", "ctrl_stop"]].to_numpy(np.int64)
        return self

    def flat_sets(self, first: int, n: int) -> np.ndarray:
        """Sets ``first .. first + n - 1`` of the endless sequence epoch 0, epoch 1, ... of
        this rank: (epoch, group, first row), shape (n, 3)."""
        sizes = self.bounds[:, 1] - self.bounds[:, 0]
        per_epoch = int(np.maximum(sizes // self.set_size, 1).sum()) // self.world_size
        if per_epoch == 0:
            raise InputError("the store sampler has no sets to draw (no perturbed rows).")
        out, pos = [], first
        while pos < first + n:
            epoch, k = divmod(pos, per_epoch)
            take = self.epoch_sets(epoch)[k: k + first + n - pos]
            out.append(np.column_stack([np.full(len(take), epoch), take]))
            pos += len(take)
        return np.concatenate(out) if out else np.zeros((0, 3), np.int64)

    def read_sets(self, sets: np.ndarray) -> dict[str, np.ndarray | CSRSets]:
        """Read (epoch, group, first row) sets, shape (k, 3): perturbed runs, matched control
        runs and groups. Each set's random control offset (and rows drawn with replacement
        from a group smaller than a set) depend only on the seed and the set itself, so any
        share of a batch reads the same cells on any rank or worker."""
        pert, ctrl = [], []
        for epoch, g, first in np.asarray(sets, np.int64):
            rng = np.random.default_rng([self.seed, epoch, g, first])
            pert.append(self._run(int(first), *self.bounds[g], rng))
            cs, ce = self.ctrl_bounds[g]
            start = cs + int(rng.integers(0, max(ce - cs - self.set_size, 0) + 1))
            ctrl.append(self._run(start, cs, ce, rng))
        return {"pert": self._read(pert), "ctrl": self._read(ctrl),
                "group": np.asarray(sets, np.int64)[:, 1].copy()}

    def epoch_sets(self, epoch: int) -> np.ndarray:
        """This rank's sets of ``epoch``: (group, first row), shape (n_rank_sets, 2)."""
        if self._plan[0] != epoch:
            self._plan = (epoch, self._plan_epoch(epoch))
        return self._plan[1]

    def _plan_epoch(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        n = self.bounds[:, 1] - self.bounds[:, 0]
        per_group = np.maximum(n // self.set_size, 1)
        offset = rng.integers(0, np.maximum(n - per_group * self.set_size, 0) + 1)
        group = np.repeat(np.arange(n.size), per_group)
        k = np.arange(group.size) - np.repeat(np.cumsum(per_group) - per_group, per_group)
        first = self.bounds[group, 0] + offset[group] + k * self.set_size
        sets = np.stack([group, first], 1)[rng.permutation(group.size)]
        per_rank = sets.shape[0] // self.world_size
        return sets[self.rank::self.world_size][:per_rank]

    def n_batches(self, epoch: int = 0) -> int:
        """Batches per epoch on every rank (equal across ranks)."""
        return self.epoch_sets(epoch).shape[0] // self.n_sets

    def _read(self, runs: list[tuple[int, int, np.ndarray | None]]) -> CSRSets:
        """Rows of each (start, stop, pick) run: a contiguous slice, or ``pick`` rows of it."""
        indptr, ind, dat = self.matrix.indptr, self.matrix.indices, self.matrix.data
        ptrs, inds, vals, rows, base = [np.zeros(1, np.int64)], [], [], [], 0
        for s, e, pick in runs:
            if pick is None:
                p = np.asarray(indptr[s: e + 1], np.int64)
                inds.append(ind[p[0]: p[-1]])
                vals.append(dat[p[0]: p[-1]])
                ptrs.append(p[1:] - p[0] + base)
                rows.append(np.arange(s, e))
                base += int(p[-1] - p[0])
            else:  # a group smaller than the set: its rows drawn with replacement
                p = np.asarray(indptr[s: e + 1], np.int64)
                a, b = p[pick] - p[0], p[pick + 1] - p[0]
                block_i, block_v = ind[p[0]: p[-1]], dat[p[0]: p[-1]]
                pos = np.repeat(a - np.cumsum(b - a) + (b - a), b - a) + np.arange((b - a).sum())
                inds.append(block_i[pos])
                vals.append(block_v[pos])
                ptrs.append(np.cumsum(b - a) + base)
                rows.append(s + pick)
                base += int((b - a).sum())
        self.matrix.note_read(8 * base + 3 * 65536 * len(runs))  # + each run's fault-around
        return CSRSets(np.concatenate(ptrs), np.concatenate(inds), np.concatenate(vals),
                       np.stack(rows))

    def batch(self, epoch: int, index: int) -> dict[str, np.ndarray | CSRSets]:
        """Batch ``index`` of this rank's ``epoch``: perturbed sets, matched controls, groups."""
        sets = self.epoch_sets(epoch)[index * self.n_sets: (index + 1) * self.n_sets]
        rng = np.random.default_rng([self.seed, epoch, self.rank, index])
        pert, ctrl = [], []
        for g, first in sets:
            pert.append(self._run(int(first), *self.bounds[g], rng))
            cs, ce = self.ctrl_bounds[g]
            start = cs + int(rng.integers(0, max(ce - cs - self.set_size, 0) + 1))
            ctrl.append(self._run(start, cs, ce, rng))
        return {"pert": self._read(pert), "ctrl": self._read(ctrl), "group": sets[:, 0].copy()}

    def _run(self, first: int, start: int, stop: int, rng: np.random.Generator):
        if stop - start >= self.set_size:
            return first, first + self.set_size, None
        return start, stop, rng.integers(0, stop - start, self.set_size)


class StoreSetDataset(IterableDataset):
    """One epoch of a :class:`StoreSetSampler` for a ``DataLoader(batch_size=None)``; with
    ``num_workers`` > 0, worker w yields batches w, w + n_workers, ... (the loader's order is
    then the batch order). Call :meth:`set_epoch` between epochs."""

    def __init__(self, sampler: StoreSetSampler, epoch: int = 0) -> None:
        self.sampler, self.epoch = sampler, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.sampler.n_batches(self.epoch)

    def __iter__(self):
        info = get_worker_info()
        wid, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for i in range(wid, self.sampler.n_batches(self.epoch), n_workers):
            yield self.sampler.batch(self.epoch, i)
