"""Conditional flow matching with an endpoint parameterisation.

Path: x_t = (1 - t) x0 + t x1 (+ optional noise sigma). The network predicts the endpoint
x1_hat = net(x_t, t, cond); the velocity follows as v = (x1_hat - x_t) / (1 - t). Training
minimises the endpoint error ||x1_hat - x1||^2; sampling integrates v from t=0 to 1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

EndpointFn = Callable[[Tensor, Tensor], Tensor]  # (x_t, t) -> x1_hat, condition bound inside
Solver = Literal["euler", "midpoint", "rk4"]
T_MAX = 1.0 - 1e-3  # the velocity is evaluated at t <= T_MAX (it divides by 1 - t)


def interpolate(x0: Tensor, x1: Tensor, t: Tensor, sigma: float = 0.0) -> Tensor:
    """x_t for x0, x1 of shape (n_sets, set_size, d) and t of shape (n_sets,)."""
    tt = t.view(-1, *([1] * (x0.dim() - 1)))
    xt = (1 - tt) * x0 + tt * x1
    if sigma > 0:
        xt = xt + sigma * torch.sqrt(tt * (1 - tt)) * torch.randn_like(xt)
    return xt


def endpoint_loss(x1_hat: Tensor, x1: Tensor) -> Tensor:
    return (x1_hat - x1).pow(2).mean()


def velocity(endpoint: EndpointFn, x: Tensor, t: Tensor) -> Tensor:
    t = t.clamp(max=T_MAX)
    tt = t.view(-1, *([1] * (x.dim() - 1)))
    return (endpoint(x, t) - x) / (1 - tt)


@torch.no_grad()
def sample(endpoint: EndpointFn, x0: Tensor, steps: int = 10, solver: Solver = "midpoint"
           ) -> Tensor:
    """Integrate dx/dt = v(x, t) from t=0 (x0, shape (n_sets, set_size, d)) to t=1."""
    x = x0
    n = x0.shape[0]
    h = 1.0 / steps
    for k in range(steps):
        t = torch.full((n,), k * h, dtype=x0.dtype, device=x0.device)
        if solver == "euler":
            x = x + h * velocity(endpoint, x, t)
        elif solver == "midpoint":
            x_mid = x + 0.5 * h * velocity(endpoint, x, t)
            x = x + h * velocity(endpoint, x_mid, t + 0.5 * h)
        elif solver == "rk4":
            k1 = velocity(endpoint, x, t)
            k2 = velocity(endpoint, x + 0.5 * h * k1, t + 0.5 * h)
            k3 = velocity(endpoint, x + 0.5 * h * k2, t + 0.5 * h)
            k4 = velocity(endpoint, x + h * k3, t + h)
            x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        else:
            raise ValueError(f"unknown solver {solver!r}; use euler, midpoint or rk4")
    return x
