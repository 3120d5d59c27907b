"""Expression-level metrics on pseudobulk means and cells (cell-eval 0.8.x definitions).

Each function returns ``{perturbation: value}``; a perturbation left out of the dict has no
value (cell-eval's 'null'), which the summary mean skips, while a NaN propagates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class PairArrays:
    """Pseudobulk means of real and predicted cells, rows in ``perts`` order.

    Attributes
    ----------
    perts : ndarray, shape (n_perts,), sorted non-control perturbations
    genes : ndarray, shape (n_genes,)
    real, pred : ndarray, shape (n_perts, n_genes), perturbation means
    ctrl_real, ctrl_pred : ndarray, shape (n_genes,), control means
    """

    perts: np.ndarray
    genes: np.ndarray
    real: np.ndarray
    pred: np.ndarray
    ctrl_real: np.ndarray
    ctrl_pred: np.ndarray

    @property
    def delta_real(self) -> np.ndarray:
        return self.real - self.ctrl_real

    @property
    def delta_pred(self) -> np.ndarray:
        return self.pred - self.ctrl_pred


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return np.clip(r, -1.0, 1.0)


def _as_dict(perts, values) -> dict[str, float]:
    return {str(p): float(v) for p, v in zip(perts, values, strict=True)}


def pearson_delta(d: PairArrays) -> dict[str, float]:
    return _as_dict(d.perts, _rowwise_pearson(d.delta_pred, d.delta_real))


def mse(d: PairArrays) -> dict[str, float]:
    return _as_dict(d.perts, ((d.pred - d.real) ** 2).mean(1))


def mae(d: PairArrays) -> dict[str, float]:
    return _as_dict(d.perts, np.abs(d.pred - d.real).mean(1))


def mse_delta(d: PairArrays) -> dict[str, float]:
    return _as_dict(d.perts, ((d.delta_pred - d.delta_real) ** 2).mean(1))


def mae_delta(d: PairArrays) -> dict[str, float]:
    return _as_dict(d.perts, np.abs(d.delta_pred - d.delta_real).mean(1))


def discrimination_score(d: PairArrays, metric: str = "l1") -> dict[str, float]:
    """1 - (rank of the true perturbation among all real effects) / n_perts.

    Distances between each predicted effect (signed delta) and every real effect, with the
    perturbation's own target gene column excluded (a gene named exactly like the label).
    """
    real, pred = d.delta_real, d.delta_pred
    n = d.perts.size
    out = np.zeros(n)
    for i, p in enumerate(d.perts):
        keep = d.genes != p
        r, q = real[:, keep], pred[i, keep]
        if metric == "l1":
            dist = np.abs(r - q).sum(1)
        elif metric == "l2":
            dist = np.sqrt(((r - q) ** 2).sum(1))
        elif metric == "cosine":
            rn = np.linalg.norm(r, axis=1)
            qn = np.linalg.norm(q)
            rn = np.where(rn == 0, 1.0, rn)
            qn = qn if qn != 0 else 1.0
            dist = np.clip(1.0 - (r @ q) / (rn * qn), 0.0, 2.0)
        else:
            raise ValueError(f"unknown distance {metric!r}")
        rank = int((dist < dist[i]).sum() + (dist[:i] == dist[i]).sum())
        out[i] = 1.0 - rank / n
    return _as_dict(d.perts, out)


def _mean_pairwise(a: torch.Tensor, b: torch.Tensor | None, float32: bool):
    """Mean Euclidean distance over all pairs (``a`` with itself when ``b`` is None, diagonal 0).

    Like scikit-learn (which cell-eval uses), float32 data gives float32 distances averaged in
    float32 (``float32=True``; returned as a numpy float32 scalar, so that the energy distance
    ``2 d_xy - d_xx - d_yy`` is combined in float32 as cell-eval's numpy scalars are): the
    squared distances are computed in float64, rounded to float32, and their root taken in
    float32, as scikit-learn's upcast path does.
    """
    if b is None:
        if a.shape[0] < 2:
            return np.float32(0.0) if float32 else 0.0
        dist = torch.cdist(a, a)
        dist.fill_diagonal_(0.0)
    else:
        dist = torch.cdist(a, b)
    if not float32:
        return float(dist.numpy().mean())
    return np.sqrt(np.square(dist.numpy()).astype(np.float32)).mean()  # stays float32


def _t64(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


def pearson_edistance(
    real_cells: dict[str, np.ndarray], pred_cells: dict[str, np.ndarray], perts: np.ndarray,
    ctrl_real: np.ndarray, ctrl_pred: np.ndarray,
) -> float:
    """Pearson correlation over perturbations of real vs predicted energy distance to control.

    E(X, C) = 2 mean d(X, C) - mean d(X, X) - mean d(C, C), Euclidean, on cells.
    """
    def edist(cells: dict[str, np.ndarray], ctrl: np.ndarray) -> np.ndarray:
        f32 = np.asarray(ctrl).dtype == np.float32
        c = _t64(ctrl)
        sigma_c = _mean_pairwise(c, None, f32)
        out = np.zeros(perts.size)
        for i, p in enumerate(perts):
            x = _t64(cells[p])
            out[i] = 2 * _mean_pairwise(x, c, f32) - _mean_pairwise(x, None, f32) - sigma_c
        return out

    er, ep = edist(real_cells, ctrl_real), edist(pred_cells, ctrl_pred)
    if perts.size < 2:
        return float("nan")
    return float(_rowwise_pearson(er[None], ep[None])[0])
