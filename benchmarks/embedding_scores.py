"""Scores of cell embeddings shared by the embedding benchmarks: kNN label accuracy, batch
mixing, PCA. Distances are Euclidean, computed by matrix products (memory: one fold's
(n_test, n_train) distance matrix)."""

from __future__ import annotations

import numpy as np


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances, shape (len(a), len(b))."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :]


def knn_accuracy(emb: np.ndarray, labels: np.ndarray, k: int = 15, folds: int = 5) -> float:
    """Mean accuracy of a k-nearest-neighbour majority vote, k-fold (random, unstratified).

    emb : shape (n_cells, dim); labels : shape (n_cells,)"""
    order = np.random.default_rng(0).permutation(len(labels))
    hits = 0
    for part in np.array_split(order, folds):
        train = np.setdiff1d(order, part)
        nn = train[np.argsort(_sq_distances(emb[part], emb[train]), axis=1)[:, :k]]
        for i, row in zip(part, labels[nn], strict=True):
            vals, counts = np.unique(row, return_counts=True)
            hits += vals[np.argmax(counts)] == labels[i]
    return hits / len(labels)


def batch_mixing(emb: np.ndarray, batches: np.ndarray, k: int = 15) -> float:
    """Mean over cells of the entropy of the batch labels of its k nearest neighbours (itself
    excluded), divided by log(n_batches): 1 = neighbourhoods as mixed as the batch count
    allows, 0 = every neighbour from one batch (an iLISI-like score in [0, 1])."""
    names, codes = np.unique(batches, return_inverse=True)
    if names.size < 2:
        return 1.0
    ent = np.empty(len(codes))
    for part in np.array_split(np.arange(len(codes)), max(1, len(codes) // 500)):
        d = _sq_distances(emb[part], emb)
        d[np.arange(part.size), part] = np.inf
        nn = np.argpartition(d, k, axis=1)[:, :k]
        freq = np.stack([(codes[nn] == b).mean(1) for b in range(names.size)], 1)
        ent[part] = -(freq * np.log(np.where(freq > 0, freq, 1.0))).sum(1)
    return float(ent.mean() / np.log(names.size))


def pca(x: np.ndarray, dim: int) -> np.ndarray:
    """Principal component scores, shape (n_cells, dim), of centred x (n_cells, n_genes)."""
    xc = x - x.mean(0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    return u[:, :dim] * s[:dim]
