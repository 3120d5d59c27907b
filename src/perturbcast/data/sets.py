"""Sampling sets of cells for set models: a perturbed set and a matched control set.

Each draw picks a training condition (perturbation, context), a batch among that condition's
cells (weighted by cell count), ``set_size`` perturbed cells of that condition and batch, and
``set_size`` control cells of the same context and, when it has enough controls, the same
batch. Pools smaller than the set are sampled with replacement. The sampler works on cell
indices only, so the same code serves an in-memory matrix or an out-of-core store.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

MIN_BATCH_CONTROLS = 8  # fewer controls than this in (context, batch): use the whole context


@dataclass
class SetBatch:
    """Indices for one batch of sets.

    ctrl, pert : int arrays, shape (n_sets, set_size): rows of the cell matrix
    condition : int array, shape (n_sets,): index into the sampler's conditions
    batch : int array, shape (n_sets,): batch id of the set (-1 when no batch key)
    """

    ctrl: np.ndarray
    pert: np.ndarray
    condition: np.ndarray
    batch: np.ndarray


class SetSampler:
    """Draw matched (control set, perturbed set) pairs.

    Parameters
    ----------
    condition_cells : one index array per condition (its perturbed cells)
    condition_context : context id per condition
    cell_context, cell_batch : context id / batch id (or None) of every cell
    is_control : bool array over cells
    set_size : cells per set
    """

    def __init__(self, condition_cells: list[np.ndarray], condition_context: np.ndarray,
                 cell_context: np.ndarray, cell_batch: np.ndarray | None,
                 is_control: np.ndarray, set_size: int) -> None:
        self.set_size = set_size
        self.condition_context = np.asarray(condition_context)
        batch = np.zeros(len(cell_context), np.int64) if cell_batch is None else cell_batch
        self.has_batch = cell_batch is not None
        self.pools: list[tuple[np.ndarray, np.ndarray]] = []  # (batch ids, weights) per cond
        self.pert_cells: list[dict[int, np.ndarray]] = []
        for cells in condition_cells:
            by_batch = defaultdict(list)
            for i in cells:
                by_batch[int(batch[i])].append(i)
            ids = np.array(sorted(by_batch))
            self.pert_cells.append({b: np.asarray(by_batch[b]) for b in ids})
            w = np.array([len(by_batch[b]) for b in ids], float)
            self.pools.append((ids, w / w.sum()))
        ctrl = np.flatnonzero(is_control)
        self.ctrl_ctx: dict[int, np.ndarray] = {}
        self.ctrl_ctx_batch: dict[tuple[int, int], np.ndarray] = {}
        for c in np.unique(cell_context[ctrl]):
            in_c = ctrl[cell_context[ctrl] == c]
            self.ctrl_ctx[int(c)] = in_c
            for b in np.unique(batch[in_c]):
                sel = in_c[batch[in_c] == b]
                if sel.size >= MIN_BATCH_CONTROLS:
                    self.ctrl_ctx_batch[(int(c), int(b))] = sel

    @property
    def n_conditions(self) -> int:
        return len(self.pert_cells)

    def controls(self, context: int, batch: int) -> np.ndarray:
        pool = self.ctrl_ctx_batch.get((context, batch))
        return pool if pool is not None else self.ctrl_ctx[context]

    def _draw(self, pool: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(pool, self.set_size, replace=pool.size < self.set_size)

    def sample(self, n_sets: int, rng: np.random.Generator) -> SetBatch:
        conds = rng.integers(0, self.n_conditions, n_sets)
        ctrl = np.empty((n_sets, self.set_size), np.int64)
        pert = np.empty((n_sets, self.set_size), np.int64)
        batches = np.empty(n_sets, np.int64)
        for k, c in enumerate(conds):
            ids, w = self.pools[c]
            b = int(ids[rng.choice(ids.size, p=w)]) if ids.size > 1 else int(ids[0])
            pert[k] = self._draw(self.pert_cells[c][b], rng)
            ctrl[k] = self._draw(self.controls(int(self.condition_context[c]), b), rng)
            batches[k] = b if self.has_batch else -1
        return SetBatch(ctrl, pert, conds, batches)


def holdout_cells(groups: list[np.ndarray], fraction: float, rng: np.random.Generator,
                  min_keep: int = 3) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Split each group's cells into (train, validation); groups too small stay whole in train.

    Returns two lists aligned with ``groups``; a validation entry may be empty.
    """
    train, val = [], []
    for g in groups:
        n_val = int(round(fraction * g.size))
        if n_val == 0 or g.size - n_val < min_keep:
            train.append(g)
            val.append(g[:0])
            continue
        perm = rng.permutation(g)
        train.append(np.sort(perm[n_val:]))
        val.append(np.sort(perm[:n_val]))
    return train, val
