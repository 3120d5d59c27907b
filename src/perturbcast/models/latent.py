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

    def fit_sparse(self, read_csr, n_cells: int, rng: np.random.Generator,
                   chunk: int = 4096) -> LatentSpace:
        """Fit on ``read_csr(sel)`` -> scipy CSR rows ``sel`` (sorted positions) of the training
        cells, shape (len(sel), n_genes), in streaming passes over chunks of a bounded random
        sample (``MAX_PCA_CELLS`` rows, as :meth:`fit_rows`): peak memory is a chunk plus an
        (n_genes, n_genes) covariance (up to ``MAX_EXACT_SVD_GENES`` genes; above, a subspace
        iteration keeps (n_genes, n_latent + 20) blocks). The sample's PCA, as :meth:`fit_rows`
        computes it (up to numerical precision; each component's largest entry positive).
        """
        sel = np.arange(n_cells)
        if n_cells > MAX_PCA_CELLS:
            sel = np.sort(rng.choice(n_cells, MAX_PCA_CELLS, replace=False))
        chunks = [sel[s: s + chunk] for s in range(0, sel.size, chunk)]
        total, n_genes = None, 0
        for c in chunks:
            x = read_csr(c)
            part = np.asarray(x.sum(0), np.float64).ravel()
            total = part if total is None else total + part
            n_genes = x.shape[1]
        mean = total / max(sel.size, 1)
        self.mean = mean.astype(np.float32)

        def cov_times(q: np.ndarray) -> np.ndarray:
            """(X - mean)^T (X - mean) q over the sample, q shape (n_genes, l)."""
            out = np.zeros(q.shape)
            for c in chunks:
                x = read_csr(c).astype(np.float64)
                out += x.T @ (x @ q)
            return out - sel.size * np.outer(mean, mean @ q)

        if self.kind == "genes" or n_genes <= MAX_EXACT_SVD_GENES:
            cov = np.zeros((n_genes, n_genes))
            for c in chunks:
                x = read_csr(c).astype(np.float64)
                cov += (x.T @ x).toarray()
            cov -= sel.size * np.outer(mean, mean)
            if self.kind == "genes":
                self.scale = float(np.sqrt(max(np.trace(cov), 0) / (sel.size * n_genes))) or 1.0
                return self
            vals, vecs = np.linalg.eigh(cov)
            del cov
        else:  # subspace iteration on the covariance (randomised, streaming)
            q = rng.standard_normal((n_genes, min(self.n_latent + 20, n_genes)))
            for _ in range(5):
                q = np.linalg.qr(cov_times(np.linalg.qr(q)[0]))[0]
            vals, w = np.linalg.eigh(q.T @ cov_times(q))
            vecs = q @ w
        k = max(1, min(self.n_latent, sel.size, n_genes))
        top = np.argsort(vals)[::-1][:k]
        comp = vecs[:, top]
        comp *= np.sign(comp[np.abs(comp).argmax(0), np.arange(k)])
        self.components = np.ascontiguousarray(comp, np.float32)
        var = float(np.clip(vals[top], 0, None).sum())
        self.scale = float(np.sqrt(var / (sel.size * k))) or 1.0
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
