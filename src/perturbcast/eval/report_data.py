"""What the HTML report draws that the score tables do not hold, collected during a benchmark.

Per (model, fold, context, perturbation): the predicted and the real mean change (perturbed
mean minus control mean, log1p space). For the first fold and context: a small subsample of
real and predicted cells of a few perturbations (for PCA). Per learned model and fold: the
validation loss per epoch. Saved as one compressed ``report_data.npz`` beside summary.csv.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np

from ..utils import atomic_path
from .de import group_indices
from .evaluate import Reference, _align_genes, _group_means
from .scale import log1p_matrix

FILE_NAME = "report_data.npz"


class ReportData:
    """Collects mean changes, cell subsamples and training curves; see the module docstring.

    Parameters
    ----------
    n_cell_perturbations : perturbations whose cells are kept (first fold and context)
    n_cells : cells kept per perturbation and source (real or a model)
    seed : seed of the cell subsample
    """

    def __init__(self, n_cell_perturbations: int = 4, n_cells: int = 60, seed: int = 0):
        self.n_cell_perturbations, self.n_cells = n_cell_perturbations, n_cells
        self.rng = np.random.default_rng(seed)
        self.genes: np.ndarray | None = None
        self.change_keys: list[tuple[str, str, str, str]] = []
        self.pred_change: list[np.ndarray] = []
        self.real_keys: list[tuple[str, str, str]] = []
        self.real_change: list[np.ndarray] = []
        self.cell_keys: list[tuple[str, str]] = []
        self.cells: list[np.ndarray] = []
        self.cell_unit: tuple[str, str] | None = None
        self.curves: dict[str, dict[str, list[float]]] = {}
        self.control = ""

    def _subsample(self, x, idx: np.ndarray) -> np.ndarray:
        """Dense float32 rows of ``x`` at a random subset of ``idx``, shape (k, n_genes)."""
        idx = np.sort(self.rng.permutation(idx)[: self.n_cells])
        block = x[idx]
        return np.asarray(block.toarray() if hasattr(block, "toarray") else block, np.float32)

    def add(self, model_name: str, fold: str, context: str, model, pred: ad.AnnData,
            ref: Reference) -> None:
        """Record one model's predictions for one fold and context (cells of ``ref``'s genes)."""
        if self.genes is None:
            self.genes, self.control = ref.genes.astype(str), str(ref.control)
        px = log1p_matrix(_align_genes(pred, ref.genes), "predicted")
        labels = pred.obs[ref.perturbation_key].astype(str).to_numpy()
        pindex = group_indices(labels, ref.groups)
        pm = _group_means(px, pindex)
        delta = (pm[:-1] - pm[-1]).astype(np.float32)
        perts = [str(p) for p in ref.perts]
        self.change_keys += [(model_name, fold, context, p) for p in perts]
        self.pred_change.append(delta)
        if not any(k[:2] == (fold, context) for k in self.real_keys):
            self.real_keys += [(fold, context, p) for p in perts]
            self.real_change.append((ref.means - ref.ctrl_mean).astype(np.float32))
        if self.cell_unit is None:
            self.cell_unit = (fold, context)
            for g, idx in zip(ref.groups, ref.index, strict=True):
                if g == ref.control or g in perts[: self.n_cell_perturbations]:
                    self.cell_keys.append(("real", str(g)))
                    self.cells.append(self._subsample(ref.x, idx))
        if self.cell_unit == (fold, context):
            for g, idx in zip(ref.groups, pindex, strict=True):
                if g in perts[: self.n_cell_perturbations] and idx.size:
                    self.cell_keys.append((model_name, str(g)))
                    self.cells.append(self._subsample(px, idx))
        curve = getattr(model, "training_summary", {}).get("val_loss_per_epoch")
        if curve:
            self.curves.setdefault(model_name, {})[fold] = [float(v) for v in curve]

    def save(self, directory: str | Path) -> Path:
        """Write ``report_data.npz`` into ``directory`` (atomically); returns its path."""
        path = Path(directory) / FILE_NAME
        n_genes = 0 if self.genes is None else len(self.genes)

        def stack(rows: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, n_genes))

        arrays = {
            "genes": np.asarray(self.genes if self.genes is not None else [], dtype=str),
            "change_keys": np.asarray(self.change_keys, dtype=str).reshape(-1, 4),
            "pred_change": stack(self.pred_change),
            "real_keys": np.asarray(self.real_keys, dtype=str).reshape(-1, 3),
            "real_change": stack(self.real_change),
            "cell_keys": np.asarray(self.cell_keys, dtype=str).reshape(-1, 2),
            "cells": np.concatenate(self.cells) if self.cells else np.zeros((0, n_genes)),
            "cell_sizes": np.asarray([len(c) for c in self.cells], dtype=np.int64),
            "cell_unit": np.asarray(self.cell_unit or ("", ""), dtype=str),
            "curves": np.asarray(json.dumps(self.curves)),
            "control": np.asarray(self.control),
        }
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
        return path


def load_report_data(directory: str | Path) -> dict | None:
    """The arrays of ``report_data.npz`` in ``directory`` (curves decoded), or None if absent."""
    path = Path(directory) / FILE_NAME
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    data["curves"] = json.loads(str(data["curves"]))
    return data
