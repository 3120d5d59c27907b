"""The training cells of a set model: loaded once when they fit a memory budget, else read per
batch (out of core: an h5ad opened backed, or a store).

Both modes give the same values: the latent is fitted on the same bounded random sample, and
a batch's cells are encoded from the same rows (read on demand instead of looked up).
"""

from __future__ import annotations

import warnings

import numpy as np

from ..data.experiment import Experiment
from .latent import LatentSpace

READ_CHUNK = 8192


class TrainingRows:
    """Rows ``idx`` of ``exp``, addressed by position 0..len(idx)-1.

    Parameters
    ----------
    exp : the experiment; idx : int array, shape (n_train,): its training rows
    budget_gb : load the rows densely when n_train x n_genes x 4 bytes fit in this; else read
        them per batch (announced with a warning; ``mode`` says which)
    """

    def __init__(self, exp: Experiment, idx: np.ndarray, budget_gb: float) -> None:
        self.exp, self.idx = exp, idx
        need_gb = idx.size * exp.n_genes * 4 / 1e9
        self.mode = "dense" if need_gb <= budget_gb else "streamed"
        self.x = exp.rows(idx) if self.mode == "dense" else None
        self.z_all: np.ndarray | None = None
        self.latent: LatentSpace | None = None
        if self.mode == "streamed":
            warnings.warn(f"training rows ({need_gb:.1f} GB dense) exceed memory_budget_gb="
                          f"{budget_gb:g}: reading each batch's cells from disk (streamed).",
                          stacklevel=3)

    def read(self, cells) -> np.ndarray:
        """Expression of training cells ``cells``, shape (len(cells), n_genes), float32."""
        if self.x is not None:
            return self.x[cells]
        return self.exp.rows(self.idx[cells])

    def fit_latent(self, latent: LatentSpace, rng: np.random.Generator) -> LatentSpace:
        """Fit ``latent`` on a bounded random sample; encode everything once if dense."""
        self.latent = latent.fit_rows(self.read, self.idx.size, rng)
        if self.x is not None:
            self.z_all = latent.encode(self.x)
        return latent

    @property
    def dim(self) -> int:
        return self.latent.dim

    def z(self, cells: np.ndarray) -> np.ndarray:
        """Latent of training cells, ``cells`` int array of any shape -> shape + (dim,)."""
        if self.z_all is not None:
            return self.z_all[cells]
        uniq, inv = np.unique(cells, return_inverse=True)
        return self.latent.encode(self.read(uniq))[inv.reshape(cells.shape)]

    def mean(self, cells: np.ndarray) -> np.ndarray:
        """Mean expression of training cells ``cells``, shape (n_genes,)."""
        if self.x is not None:
            return self.x[cells].mean(0)
        total = np.zeros(self.exp.n_genes)
        for s in range(0, cells.size, READ_CHUNK):
            total += self.read(cells[s: s + READ_CHUNK]).sum(0, dtype=np.float64)
        return (total / max(cells.size, 1)).astype(np.float32)
