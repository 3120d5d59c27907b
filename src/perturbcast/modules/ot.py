"""Minibatch optimal-transport pairing of two equally sized sets of cells.

Exact assignment (Hungarian, squared Euclidean cost) up to ``exact_max`` cells; above that,
entropic OT (log-domain Sinkhorn) and a greedy one-to-one rounding of the plan.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def squared_distances(x0: Tensor, x1: Tensor) -> Tensor:
    """Cost matrix, shape (n, n): ||x0_i - x1_j||^2 for x0, x1 of shape (n, d)."""
    return torch.cdist(x0.double(), x1.double()).pow(2)


def sinkhorn_plan(cost: Tensor, reg: float = 0.05, max_iter: int = 2000,
                  tol: float = 1e-9) -> Tensor:
    """Entropic OT plan with uniform marginals (log domain), shape (n, m).

    Iterates until the row marginals are within ``tol`` (relative) of uniform, or ``max_iter``.
    """
    c = cost / cost.mean().clamp_min(1e-12)
    n, m = c.shape
    log_a = torch.full((n,), -np.log(n), dtype=c.dtype)
    log_b = torch.full((m,), -np.log(m), dtype=c.dtype)
    f = torch.zeros(n, dtype=c.dtype)
    g = torch.zeros(m, dtype=c.dtype)
    for _ in range(max_iter):
        f = reg * (log_a - torch.logsumexp((g[None, :] - c) / reg, dim=1))
        g = reg * (log_b - torch.logsumexp((f[:, None] - c) / reg, dim=0))
        row = torch.logsumexp((f[:, None] + g[None, :] - c) / reg, dim=1)
        if (row - log_a).abs().max() < tol:
            break
    return torch.exp((f[:, None] + g[None, :] - c) / reg)


def ot_pairing(x0: Tensor, x1: Tensor, exact_max: int = 512, reg: float = 0.05) -> Tensor:
    """Permutation ``perm`` such that (x0[i], x1[perm[i]]) are OT pairs.

    Parameters
    ----------
    x0, x1 : Tensor, shape (n, d)
    exact_max : sets up to this size use the exact assignment
    """
    if x0.shape[0] != x1.shape[0]:
        raise ValueError("ot_pairing needs two sets of the same size")
    cost = squared_distances(x0.detach().cpu(), x1.detach().cpu())
    n = cost.shape[0]
    if n <= exact_max:
        _, cols = linear_sum_assignment(cost.numpy())
        return torch.as_tensor(cols, dtype=torch.long)
    plan = sinkhorn_plan(cost, reg=reg)
    perm = torch.full((n,), -1, dtype=torch.long)
    taken = torch.zeros(n, dtype=torch.bool)
    order = torch.argsort(plan.flatten(), descending=True)
    rows, cols = order // n, order % n
    filled = 0
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        if perm[r] < 0 and not taken[c]:
            perm[r] = c
            taken[c] = True
            filled += 1
            if filled == n:
                break
    return perm
