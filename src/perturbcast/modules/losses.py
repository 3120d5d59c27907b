"""Set-level losses: energy distance between predicted and real sets of cells."""

from __future__ import annotations

import torch
from torch import Tensor


def _mean_distance(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Mean Euclidean distance between the cells of a and b: (n_sets, n, d), (n_sets, m, d)."""
    d2 = (a.pow(2).sum(-1).unsqueeze(2) + b.pow(2).sum(-1).unsqueeze(1)
          - 2 * a @ b.transpose(1, 2))
    return torch.sqrt(d2.clamp_min(0) + eps).mean(dim=(1, 2))


def energy_distance(x: Tensor, y: Tensor) -> Tensor:
    """Energy distance per set, shape (n_sets,): 2 E|x-y| - E|x-x'| - E|y-y'|.

    Parameters
    ----------
    x, y : Tensor, shape (n_sets, set_size, d) (set sizes may differ between x and y)
    """
    return 2 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y)


def energy_loss(pred: Tensor, real: Tensor) -> Tensor:
    """Mean energy distance over sets (the STATE training loss), a scalar."""
    return energy_distance(pred, real).mean()


