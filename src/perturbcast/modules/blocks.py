"""LLaMA-style building blocks for sets of cells: RMSNorm, SwiGLU, attention across cells.

Conditioning (perturbation, context, batch, flow time) enters every block through adaptive
RMSNorm (adaLN-zero, as in DiT): a condition vector gives a shift, scale and gate per sub-layer.
We chose this over conditioning tokens because every cell of a set shares one condition: the
modulation is applied to all tokens at no extra sequence length (attention cost is unchanged),
and zero-initialised gates make each block the identity at initialisation, which keeps deep
stacks stable early in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Root-mean-square normalisation over the last dimension (optionally without weight)."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return y * self.weight if self.weight is not None else y


class SwiGLU(nn.Module):
    """Gated feed-forward: w2(silu(w1 x) * w3 x), hidden width ~ 8/3 * dim (multiple of 8)."""

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or 8 * ((int(8 * dim / 3) + 7) // 8)
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class SetAttention(nn.Module):
    """Multi-head self-attention across the cells of a set (no positional encoding).

    Parameters
    ----------
    x : Tensor, shape (n_sets, set_size, dim)
    mask : Tensor of bool, shape (n_sets, set_size), optional; True for real (not padded) cells
    """

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} must be divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.n_heads, d // self.n_heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (b, heads, s, head_dim)
        attn_mask = None if mask is None else self.attention_mask(mask)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(y.transpose(1, 2).reshape(b, s, d))

    def attention_mask(self, mask: Tensor) -> Tensor:
        """The (n_sets, set_size) key mask as an attention mask, shape (n_sets, 1, 1, set_size)."""
        return mask[:, None, None, :]


class SetBlock(nn.Module):
    """Pre-norm transformer block over a set, conditioned by adaptive RMSNorm (adaLN-zero).

    Parameters
    ----------
    x : Tensor, shape (n_sets, set_size, dim)
    cond : Tensor, shape (n_sets, cond_dim)
    mask : Tensor of bool, shape (n_sets, set_size), optional
    """

    def __init__(self, dim: int, n_heads: int, cond_dim: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(dim, affine=False)
        self.attn = SetAttention(dim, n_heads)
        self.norm2 = RMSNorm(dim, affine=False)
        self.ff = SwiGLU(dim)
        self.modulation = nn.Linear(cond_dim, 6 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: Tensor, cond: Tensor, mask: Tensor | None = None) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(
            F.silu(cond))[:, None, :].chunk(6, dim=-1)
        h = self.norm1(x) * (1 + scale1) + shift1
        x = x + gate1 * self.attn(h, mask)
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.ff(h)
