"""Permutation-equivariant set encoder: cells in, one output per cell, conditioned."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import RMSNorm, SetBlock


class SetEncoder(nn.Module):
    """A stack of :class:`SetBlock` between an input and an output projection.

    Permuting the cells of a set permutes the output the same way (no positional encoding;
    attention is the only interaction between cells).

    Parameters
    ----------
    n_in, n_out : input and output features per cell (genes or latent dimensions)
    dim, depth, n_heads : width, number of blocks and attention heads
    cond_dim : size of the condition vector
    """

    def __init__(self, n_in: int, n_out: int, dim: int = 128, depth: int = 4, n_heads: int = 4,
                 cond_dim: int = 128) -> None:
        super().__init__()
        self.inp = nn.Linear(n_in, dim)
        self.blocks = nn.ModuleList(SetBlock(dim, n_heads, cond_dim) for _ in range(depth))
        self.norm = RMSNorm(dim, affine=False)
        self.final_modulation = nn.Linear(cond_dim, 2 * dim)
        nn.init.zeros_(self.final_modulation.weight)
        nn.init.zeros_(self.final_modulation.bias)
        self.out = nn.Linear(dim, n_out)

    def forward(self, x: Tensor, cond: Tensor, mask: Tensor | None = None) -> Tensor:
        """x : (n_sets, set_size, n_in); cond : (n_sets, cond_dim) -> (n_sets, set_size, n_out)."""
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, cond, mask)
        shift, scale = self.final_modulation(F.silu(cond))[:, None, :].chunk(2, dim=-1)
        return self.out(self.norm(h) * (1 + scale) + shift)
