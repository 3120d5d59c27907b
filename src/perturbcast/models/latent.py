"""Where a set model works: a PCA latent fitted on training cells, or scaled gene space.

Predictions are decoded as the control cell plus the decoded change,
``x_pred = x_ctrl + decode(z_pred - z_ctrl)``, so each predicted cell keeps its control cell's
expression outside the latent span (its noise, its library-size pattern) and only the modelled
change is added.
"""

from __future__ import annotations

import numpy as np

MAX_PCA_CELLS = 50_000
MAX_EXACT_SVD_GENES = 4096  # above: randomised SVD (Halko et al. 2011) of the sample


def _top_right_vectors(xc: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Top-k right singular vectors of xc (n, g) as rows, shape (>= k, g): exact SVD up to
    ``MAX_EXACT_SVD_GENES`` genes, else a randomised SVD (oversampling 20, 4 power steps)."""
    if xc.shape[1] <= MAX_EXACT_SVD_GENES:
        return np.linalg.svd(xc, full_matrices=False)[2]
    q = xc @ rng.standard_normal((xc.shape[1], min(k + 20, xc.shape[1])), dtype=np.float32)
    for _ in range(4):
        q = np.linalg.qr(xc @ (xc.T @ np.linalg.qr(q)[0]))[0]
    return np.linalg.svd(q.T @ xc, full_matrices=False)[2]


class LatentSpace:
    """``kind="pca"``: z = (x - mean) V / scale with V the top ``n_latent`` PCs;
    ``kind="genes"``: z = (x - mean) / scale. ``scale`` makes the overall std of z one."""

    def __init__(self, kind: str = "pca", n_latent: int = 64) -> None:
        if kind not in ("pca", "genes"):
            raise ValueError(f"unknown space {kind!r}; use 'pca' or 'genes'")
        self.kind, self.n_latent = kind, n_latent
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None  # (n_genes, n_latent) for pca
        self.scale = 1.0

    @property
    def dim(self) -> int:
        return self.components.shape[1] if self.kind == "pca" else self.mean.size

    def fit(self, x: np.ndarray, rng: np.random.Generator) -> LatentSpace:
        """Fit on cells x, shape (n_cells, n_genes) (a random subset above 50k cells)."""
        return self.fit_rows(lambda sel: x[sel], x.shape[0], rng)

    def fit_rows(self, read, n_cells: int, rng: np.random.Generator) -> LatentSpace:
        """Fit on ``read(sel)`` -> rows ``sel`` of the training cells, shape (len(sel), n_genes),
        reading at most ``MAX_PCA_CELLS`` random rows (a bounded sample: out-of-core safe)."""
        sel = slice(None)
        if n_cells > MAX_PCA_CELLS:
            sel = np.sort(rng.choice(n_cells, MAX_PCA_CELLS, replace=False))
        x = read(sel)
        self.mean = x.mean(0).astype(np.float32)
        xc = x - self.mean
        del x  # a read sample is freed here (peak memory: the sample, its SVD)
        if self.kind == "pca":
            k = max(1, min(self.n_latent, *xc.shape))
            vt = _top_right_vectors(xc.astype(np.float32, copy=False), k, rng)
            self.components = np.ascontiguousarray(vt[:k].T, np.float32)
            z = xc @ self.components
        else:
            z = xc
        self.scale = float(z.std()) or 1.0
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(n, n_genes) -> (n, dim), float32."""
        xc = x - self.mean
        z = xc @ self.components if self.kind == "pca" else xc
        return (z / self.scale).astype(np.float32)

    def encode_change(self, d: np.ndarray) -> np.ndarray:
        """A change in genes (n, n_genes) -> latent coordinates (n, dim), float32 (linear, so
        ``encode(x + d) = encode(x) + encode_change(d)``)."""
        z = d @ self.components if self.kind == "pca" else d
        return (z / self.scale).astype(np.float32)

    def decode_change(self, dz: np.ndarray) -> np.ndarray:
        """A change in latent coordinates (n, dim) -> the change in genes (n, n_genes)."""
        d = dz * self.scale
        return (d @ self.components.T if self.kind == "pca" else d).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        comp = self.components if self.components is not None else np.zeros((0, 0), np.float32)
        return {"latent_kind": np.asarray(self.kind), "latent_mean": self.mean,
                "latent_components": comp, "latent_scale": np.asarray(self.scale)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> LatentSpace:
        out = cls(str(state["latent_kind"]))
        out.mean = state["latent_mean"]
        out.components = state["latent_components"] if out.kind == "pca" else None
        out.n_latent = out.components.shape[1] if out.kind == "pca" else out.mean.size
        out.scale = float(state["latent_scale"])
        return out
