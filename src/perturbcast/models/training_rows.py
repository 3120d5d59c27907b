"""The training cells of a set model: loaded once when they fit a memory budget, else read per
batch (out of core: an h5ad opened backed), or, for a store-backed Experiment, never loaded:
mode ``"store"`` reads CSR rows on demand, fits the latent in streaming passes over a bounded
sample (:meth:`LatentSpace.fit_sparse`) and encodes sparse rows without densifying them.

The dense and streamed modes give the same values: the latent is fitted on the same bounded
random sample, and a batch's cells are encoded from the same rows (read on demand instead of
looked up). The store mode's latent is the same sample's PCA up to numerical precision.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp

from ..data.experiment import Experiment
from .latent import LatentSpace

READ_CHUNK = 8192


class TrainingRows:
    """Rows ``idx`` of ``exp``, addressed by position 0..len(idx)-1.

    Parameters
    ----------
    exp : the experiment; idx : int array, shape (n_train,): its training rows
    budget_gb : load the rows densely when n_train x n_genes x 4 bytes fit in this; else read
        them per batch (announced with a warning; ``mode`` says which). Not used for a
        store-backed Experiment (mode ``"store"``: nothing is loaded whole) unless
        ``use_store`` is False
    """

    def __init__(self, exp: Experiment, idx: np.ndarray, budget_gb: float,
                 use_store: bool = True) -> None:
        self.exp, self.idx = exp, idx
        need_gb = idx.size * exp.n_genes * 4 / 1e9
        self.mode = "dense" if need_gb <= budget_gb else "streamed"
        self._store_proj: tuple[np.ndarray, np.ndarray] | None = None
        if use_store and is_store_backed(exp):
            self.mode = "store"
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

    def csr(self, cells: np.ndarray) -> sp.csr_matrix:
        """Training cells ``cells`` as sparse rows (store mode), shape (len(cells), n_genes)."""
        m = self.exp.matrix
        ptr, ind, val = m.csr_rows(self.idx[cells])
        x = sp.csr_matrix((val, ind, ptr), shape=(ptr.size - 1, m.n_store_genes))
        return x if m.cols is None else x[:, m.cols]

    def encode_store_csr(self, ptr: np.ndarray, ind: np.ndarray, val: np.ndarray
                         ) -> np.ndarray:
        """Latent of rows given as CSR pieces in the store's gene space (from
        :class:`~perturbcast.data.store_sampler.StoreSetSampler`), shape (n_rows, dim):
        ``latent.encode`` of the same rows, computed sparse (PCA) without densifying them."""
        lat, m = self.latent, self.exp.matrix
        x = sp.csr_matrix((val, ind, ptr), shape=(ptr.size - 1, m.n_store_genes))
        if lat.kind != "pca":
            return lat.encode(x.toarray() if m.cols is None else x[:, m.cols].toarray())
        if self._store_proj is None:  # components in store gene space (zero off the view)
            proj = np.zeros((m.n_store_genes, lat.dim), np.float32)
            proj[slice(None) if m.cols is None else m.cols] = lat.components
            self._store_proj = (proj, lat.mean @ lat.components)
        proj, offset = self._store_proj
        return ((x @ proj - offset) / lat.scale).astype(np.float32)

    def fit_latent(self, latent: LatentSpace, rng: np.random.Generator) -> LatentSpace:
        """Fit ``latent`` on a bounded random sample; encode everything once if dense."""
        if self.mode == "store":
            self.latent = latent.fit_sparse(self.csr, self.idx.size, rng, chunk=1024)
            return latent
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
        if self.mode == "store":
            total = np.zeros(self.exp.n_genes)
            for s in range(0, cells.size, READ_CHUNK):
                total += np.asarray(self.csr(cells[s: s + READ_CHUNK]).sum(0, np.float64)).ravel()
            return (total / max(cells.size, 1)).astype(np.float32)
        total = np.zeros(self.exp.n_genes)
        for s in range(0, cells.size, READ_CHUNK):
            total += self.read(cells[s: s + READ_CHUNK]).sum(0, dtype=np.float64)
        return (total / max(cells.size, 1)).astype(np.float32)


def is_store_backed(exp: Experiment) -> bool:
    """True when ``exp`` reads its rows from a store (its matrix has CSR row access)."""
    return exp.matrix is not None and hasattr(exp.matrix, "csr_rows")
