"""Training sets of a set model drawn from a store by
:class:`~perturbcast.data.store_sampler.StoreSetSampler` (contiguous reads + a numpy gather).

The training cells of a store-backed Experiment are cut into runs: maximal ranges of
consecutive store rows with the same condition (perturbation, context) and batch (for
controls: context and batch). A store keeps each group's cells contiguous and shuffled, so a
run's tail is a random sample: the last ``val_fraction`` of every perturbed run (and of every
control run with ``val_controls="held_out"``) is held out for validation. Each perturbed run is
matched to the largest control run of its context and batch (with at least
``MIN_BATCH_CONTROLS`` cells, else of its context), as the in-memory sampler does.

Batch ``d`` of training holds sets ``d * n_sets ...`` of the sampler's endless sequence of
epochs (each epoch covers every training perturbed cell once, in a new order): a pure function
of the seed and ``d``, so DataLoader workers, DDP ranks (each reads its :func:`rank_share` of
the global batch) and resumed runs all see the same sets. Rows are never densified whole:
each batch's CSR rows are projected on the PCA latent as sparse products.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..data.sets import MIN_BATCH_CONTROLS
from ..data.store_sampler import CSRSets, StoreSetSampler
from ..errors import InputError
from ..train.distributed import rank_share
from .set_data import Arrange, SetBatches, TrainingData, set_tensors

MIN_KEEP = 3  # a run keeps at least this many training cells (as holdout_cells)


def store_runs(data: TrainingData) -> pd.DataFrame | None:
    """Runs of consecutive store rows of the training cells with one label: columns start,
    stop (store rows), condition (-1 for controls), context, batch, size. None when the
    Experiment's groups are fragmented in the store (more than two runs per group on average,
    e.g. keys other than those the store was sorted by)."""
    rows, n_cond = data.rows, len(data.cond_keys)
    store_row = rows.exp.matrix.store_rows(rows.idx)
    cond = np.full(rows.idx.size, -1, np.int64)
    for i, cells in enumerate(data.cond_cells):
        cond[cells] = i
    batch = (np.zeros(rows.idx.size, np.int64) if data.cell_batch is None
             else np.asarray(data.cell_batch, np.int64))
    nb = int(batch.max(initial=0)) + 1
    label = np.where(cond >= 0, cond, n_cond + np.asarray(data.cell_ctx, np.int64)) * nb + batch
    order = np.argsort(store_row, kind="stable")
    s, lab = store_row[order], label[order]
    cut = np.flatnonzero((np.diff(s) != 1) | (np.diff(lab) != 0)) + 1
    first, last = np.r_[0, cut], np.r_[cut, s.size] - 1
    if first.size > 2 * np.unique(lab).size:
        return None
    code = lab[first] // nb
    is_pert = code < n_cond
    ctx = np.where(is_pert, np.asarray(data.enc["context"])[np.minimum(code, n_cond - 1)],
                   code - n_cond)
    return pd.DataFrame({"start": s[first], "stop": s[last] + 1,
                         "condition": np.where(is_pert, code, -1), "context": ctx,
                         "batch": lab[first] % nb, "size": last - first + 1})


def split_tails(runs: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training, validation) runs: each run's last ``round(fraction * size)`` rows are held
    out, unless that leaves fewer than ``MIN_KEEP`` (then it stays whole in training)."""
    n_val = np.round(fraction * runs["size"].to_numpy()).astype(np.int64)
    n_val[(n_val == 0) | (runs["size"].to_numpy() - n_val < MIN_KEEP)] = 0
    train = runs.assign(stop=runs.stop - n_val, size=runs["size"] - n_val)
    val = runs.assign(start=runs.stop - n_val, size=n_val)[n_val > 0]
    return train.reset_index(drop=True), val.reset_index(drop=True)


def match_controls(pert: pd.DataFrame, ctrl: pd.DataFrame, context_names: list[str]
                   ) -> pd.DataFrame:
    """``pert`` runs with ``ctrl_start, ctrl_stop``: the largest control run of the same
    context and batch (>= ``MIN_BATCH_CONTROLS`` cells), else the largest of the context
    (context ids are 1-based positions in ``context_names``)."""
    ctrl = ctrl.sort_values("size", ascending=False, kind="stable")
    by_cb = {(c, b): (s, e) for c, b, s, e, n in ctrl[["context", "batch", "start", "stop",
                                                       "size"]].itertuples(index=False)
             if n >= MIN_BATCH_CONTROLS}
    by_c = {}
    for c, s, e in ctrl[["context", "start", "stop"]].itertuples(index=False):
        by_c.setdefault(c, (s, e))
    bounds = []
    for c, b in pert[["context", "batch"]].itertuples(index=False):
        found = by_cb.get((c, b)) or by_c.get(c)
        if found is None:
            raise InputError(f"context {context_names[c - 1]!r} has perturbed training cells "
                             f"but no control cells in training; sets need controls of the "
                             f"same context.")
        bounds.append(found)
    out = pert.copy()
    out[["ctrl_start", "ctrl_stop"]] = np.asarray(bounds, np.int64).reshape(-1, 2)
    return out


class StoreSetBatches:
    """Training and validation batches of a set model from a store (see the module docs).

    Same interface as :class:`~perturbcast.models.set_data.SetBatches` for the model, plus
    ``dataset(seed)``: a map-style dataset, batch number -> batch, for
    :func:`~perturbcast.train.lightning.train_network`.
    """

    kind = "store"

    def __init__(self, data: TrainingData, runs: pd.DataFrame, params: dict,
                 arrange: Arrange, seed: int) -> None:
        self.data, self.params, self.arrange = data, params, arrange
        frac = params["val_fraction"]
        pert, ctrl = runs[runs.condition >= 0], runs[runs.condition < 0]
        pert_train, pert_val = split_tails(pert, frac)
        ctrl_train, ctrl_val = (split_tails(ctrl, frac) if params["val_controls"] == "held_out"
                                else (ctrl, ctrl))
        names = data.context_names
        self.train_runs = match_controls(pert_train, ctrl_train, names)
        self.val_runs = (match_controls(pert_val, ctrl_val, names)
                         if len(pert_val) and len(ctrl_val) else None)
        self.enc_t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.enc.items()}
        self.path = data.rows.exp.matrix.path
        self.seed = seed

    @property
    def n_train_perturbed(self) -> int:
        return int(self.train_runs["size"].sum())

    def sampler(self, runs: pd.DataFrame, seed: int) -> StoreSetSampler:
        return StoreSetSampler.from_segments(self.path, runs, self.params["set_size"],
                                             self.params["n_sets"], seed)

    def make(self, smp: StoreSetSampler, sets: np.ndarray, rng: np.random.Generator,
             drop: float, share: slice = slice(None)) -> dict[str, Tensor]:
        """Tensors of the global batch ``sets`` (n_sets, 3); this rank reads ``share``."""
        n = len(sets)
        ctx_keep = rng.random(n) >= drop if drop > 0 else np.ones(n, bool)
        batch_keep = rng.random(n) >= drop if drop > 0 else np.ones(n, bool)
        got = smp.read_sets(sets[share])
        runs = smp.groups.iloc[got["group"]]
        return set_tensors(self.encode(got["ctrl"]), self.encode(got["pert"]),
                           runs["condition"].to_numpy(np.int64),
                           runs["batch"].to_numpy(np.int64), ctx_keep[share],
                           batch_keep[share], self.enc_t, self.data.enc["base"], self.arrange)

    def encode(self, sets: CSRSets) -> np.ndarray:
        """Latent of the sets' cells, shape (n_sets, set_size, d)."""
        z = self.data.rows.encode_store_csr(sets.ptr, sets.indices, sets.data)
        return z.reshape(*sets.rows.shape, -1)

    def validation_batches(self, n: int, seed: int) -> list[dict[str, Tensor]]:
        """``n`` fixed validation batches (none when no run has held-out cells)."""
        if self.val_runs is None:
            return []
        smp, k = self.sampler(self.val_runs, seed), self.params["n_sets"]
        sets = smp.flat_sets(0, n * k)
        rng = np.random.default_rng(seed)
        return [self.make(smp, sets[i * k: (i + 1) * k], rng, 0.0) for i in range(n)]

    def dataset(self, seed: int) -> StoreTrainingSets:
        return StoreTrainingSets(self, self.sampler(self.train_runs, seed), seed)


class StoreTrainingSets(torch.utils.data.Dataset):
    """Map-style dataset: batch number ``d`` -> the training batch of sets ``d * n_sets ...``
    (this rank's share under DDP; context / batch dropout drawn from ``(seed, d)``)."""

    def __init__(self, batches: StoreSetBatches, sampler: StoreSetSampler, seed: int) -> None:
        self.batches, self.sampler, self.seed = batches, sampler, seed

    def __getitem__(self, draw: int) -> dict[str, Tensor]:
        k = self.batches.params["n_sets"]
        sets = self.sampler.flat_sets(int(draw) * k, k)
        rng = np.random.default_rng([self.seed, int(draw), 1])
        return self.batches.make(self.sampler, sets, rng,
                                 self.batches.params["context_dropout"], rank_share(k))


def training_batches(data: TrainingData, params: dict, arrange: Arrange,
                     rng: np.random.Generator, seed: int, model: str
                     ) -> SetBatches | StoreSetBatches:
    """The store sampler's batches on a store (``sampler`` auto or store), else in-memory."""
    if data.rows.mode != "store" or params["sampler"] == "rows":
        if params["sampler"] == "store":
            raise InputError(f"{model}: sampler='store' needs a store-backed experiment "
                             f"(read_experiment on a `perturbcast convert` folder); use "
                             f"sampler='auto'.")
        return SetBatches(data, params, arrange, rng)
    runs = store_runs(data)
    if runs is None:
        warnings.warn(f"{model}: the experiment's groups are scattered over the store (keys "
                      f"other than those it was converted with); drawing sets by row instead "
                      f"of contiguous runs (slower).", stacklevel=4)
        return SetBatches(data, params, arrange, rng)
    return StoreSetBatches(data, runs, params, arrange, seed)
