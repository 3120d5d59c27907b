"""In-context tabular network (STACK-like): attention within each cell and across the cells.

A cell's log1p expression becomes M gene-module tokens of width d (one learned projection
G -> M*d, SiLU, plus a learned module embedding). Each block attends (1) within a cell over its
M tokens, (2) across the cells of the set, then applies a SwiGLU MLP per token; RMSNorm before
each sub-layer. Across-cell attention comes in two variants (``cross=``):

- ``"module"`` (default): per module token, attention over the cells independently for each
  module (batch n_sets * M, width d);
- ``"flat"``: over the flattened cell vector (width M * d, one attention per set).

Only the across-cell attention takes a mask, so prompt rows can be kept from attending to query
rows. Rows carry a learned role embedding (0 = unlabelled / prompt control, 1 = prompt
perturbed, 2 = query); hidden genes (pretraining) are zeroed in the input and signalled by a
learned indicator projection. Heads: Gaussian (mean log1p per gene, the input added back as a
skip so a row's visible profile is its starting point) or negative binomial (mean = softmax
over genes x library size, per-gene dispersion).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import RMSNorm, SetAttention, SwiGLU

ROLE_CONTROL, ROLE_PERTURBED, ROLE_QUERY = 0, 1, 2


class TokenAttention(SetAttention):
    """Multi-head self-attention over the second-to-last axis.

    Parameters
    ----------
    x : Tensor, shape (batch, length, dim)
    mask : Tensor of bool, shape (batch, length, length) or (length, length); True = may attend
    """

    def attention_mask(self, mask: Tensor) -> Tensor:
        """A pairwise mask, shape (length, length) or (batch, length, length), broadcast over
        heads."""
        return mask[None, None] if mask.dim() == 2 else mask[:, None]

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys, values of x (batch, length, dim), each (batch, heads, length,
        dim / heads)."""
        b, s, d = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, self.n_heads, d // self.n_heads).unbind(2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Unmasked attention of q over (k, v) (batch, heads, length, head_dim), projected:
        shape (batch, q_length, dim)."""
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        return self.out(y.reshape(y.shape[0], y.shape[1], -1))


class TabularBlock(nn.Module):
    """Within-cell attention, across-cell attention, SwiGLU; pre-RMSNorm residuals.

    Parameters
    ----------
    h : Tensor, shape (n_sets, n_cells, n_modules, dim)
    mask : Tensor of bool, shape (n_cells, n_cells) or (n_sets, n_cells, n_cells), optional
    """

    def __init__(self, n_modules: int, dim: int, n_heads: int, cross: str) -> None:
        super().__init__()
        if cross not in ("module", "flat"):
            raise ValueError(f"cross={cross!r} is not 'module' or 'flat'")
        self.cross = cross
        self.norm_cell = RMSNorm(dim)
        self.attn_cell = TokenAttention(dim, n_heads)
        width = dim if cross == "module" else n_modules * dim
        self.norm_set = RMSNorm(width)
        self.attn_set = TokenAttention(width, n_heads)
        self.norm_ff = RMSNorm(dim)
        self.ff = SwiGLU(dim)

    def forward(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        s, n, m, d = h.shape
        h = self._within_cell(h)
        if self.cross == "module" and mask is not None and mask.dim() == 3:
            mask = mask.repeat_interleave(m, dim=0)
        h = h + self._from_rows(self.attn_set(self.norm_set(self._rows(h)), mask), h.shape)
        return h + self.ff(self.norm_ff(h))

    def forward_prompt(self, h: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Prompt rows alone (they attend only to each other): their output, shape as h
        (1, n_prompt, M, d), and their across-cell keys and values, each (M or 1, heads,
        n_prompt, head_dim), which no query row changes."""
        h = self._within_cell(h)
        q, k, v = self.attn_set.project(self.norm_set(self._rows(h)))
        h = h + self._from_rows(self.attn_set.attend(q, k, v), h.shape)
        return h + self.ff(self.norm_ff(h)), (k, v)

    def forward_query(self, h: Tensor, prompt_kv: tuple[Tensor, Tensor]) -> Tensor:
        """Query rows h (n_sets, n_query, M, d) of sets that share one prompt, attending to
        the prompt's cached keys and values (:meth:`forward_prompt`) and to their own set."""
        h = self._within_cell(h)
        q, k, v = self.attn_set.project(self.norm_set(self._rows(h)))
        reps = k.shape[0] // prompt_kv[0].shape[0]
        k, v = (torch.cat([c.repeat(reps, 1, 1, 1), t], 2) for c, t in zip(prompt_kv, (k, v),
                                                                            strict=True))
        h = h + self._from_rows(self.attn_set.attend(q, k, v), h.shape)
        return h + self.ff(self.norm_ff(h))

    def _within_cell(self, h: Tensor) -> Tensor:
        s, n, m, d = h.shape
        return h + self.attn_cell(self.norm_cell(h).reshape(s * n, m, d)).view(s, n, m, d)

    def _rows(self, h: Tensor) -> Tensor:
        """(n_sets, n_cells, M, d) -> the across-cell sequences: (n_sets * M, n_cells, d) per
        module, or (n_sets, n_cells, M * d) flat."""
        s, n, m, d = h.shape
        return (h.transpose(1, 2).reshape(s * m, n, d) if self.cross == "module"
                else h.reshape(s, n, m * d))

    def _from_rows(self, y: Tensor, shape: torch.Size) -> Tensor:
        s, n, m, d = shape
        return (y.view(s, m, n, d).transpose(1, 2) if self.cross == "module"
                else y.view(s, n, m, d))


class TabularSetNet(nn.Module):
    """The in-context network.

    Parameters
    ----------
    n_genes : G, genes per cell
    n_modules, dim : M tokens of width d per cell
    depth, n_heads : blocks and attention heads
    cross : "module" (attention over cells per module token) or "flat" (over cell vectors)
    head : "gaussian" (log1p mean per gene) or "nb" (negative-binomial mean and dispersion)
    prompt_summary : add to every query row's tokens a projection of the prompt's mean
        change (mean of perturbed prompt rows - mean of control prompt rows, per set)
    change_skip : (Gaussian head) add that change, times a learned per-gene gain (starts at
        1), to the query rows' output: the network starts from transferring the prompt's
        response and learns the target context's corrections
    """

    def __init__(self, n_genes: int, n_modules: int = 32, dim: int = 16, depth: int = 4,
                 n_heads: int = 4, cross: str = "module", head: str = "gaussian",
                 prompt_summary: bool = True, change_skip: bool = True) -> None:
        super().__init__()
        if head not in ("gaussian", "nb"):
            raise ValueError(f"head={head!r} is not 'gaussian' or 'nb'")
        self.n_modules, self.dim, self.head = n_modules, dim, head
        width = n_modules * dim
        self.tokens = nn.Linear(n_genes, width)
        self.hidden_indicator = nn.Linear(n_genes, width, bias=False)
        self.module_embedding = nn.Parameter(torch.randn(n_modules, dim) * 0.02)
        self.role_embedding = nn.Parameter(torch.zeros(3, n_modules, dim))
        nn.init.normal_(self.role_embedding, std=0.02)
        self.prompt_summary = nn.Linear(n_genes, width, bias=False) if prompt_summary else None
        self.change_gain = nn.Parameter(torch.ones(n_genes)) if change_skip else None
        self.blocks = nn.ModuleList(TabularBlock(n_modules, dim, n_heads, cross)
                                    for _ in range(depth))
        self.norm_out = RMSNorm(width)
        self.out = nn.Linear(width, n_genes)
        nn.init.normal_(self.out.weight, std=0.1 / math.sqrt(width))
        nn.init.zeros_(self.out.bias)
        self.log_theta = nn.Parameter(torch.zeros(n_genes))  # NB dispersion (log)

    def encode(self, x: Tensor, role: Tensor | None = None, hidden: Tensor | None = None,
               mask: Tensor | None = None) -> Tensor:
        """Final cell vectors.

        Parameters
        ----------
        x : Tensor, shape (n_sets, n_cells, n_genes), log1p expression
        role : Tensor of long, shape (n_sets, n_cells) or (n_cells,), values 0/1/2; default 0
        hidden : Tensor of bool, shape (n_sets, n_genes): genes hidden in every cell of a set
        mask : Tensor of bool, shape (n_cells, n_cells) or (n_sets, n_cells, n_cells)

        Returns
        -------
        Tensor, shape (n_sets, n_cells, n_modules * dim)
        """
        s, n, _ = x.shape
        m, d = self.n_modules, self.dim
        if hidden is not None:
            x = x.masked_fill(hidden[:, None, :], 0.0)
        h = F.silu(self.tokens(x))
        if hidden is not None:
            h = h + self.hidden_indicator(hidden.to(x.dtype))[:, None, :]
        h = h.view(s, n, m, d) + self.module_embedding
        if role is not None:
            role = role if role.dim() == 2 else role.expand(s, n)
            h = h + self.role_embedding[role]
            if self.prompt_summary is not None:
                change, is_query = self.prompt_change(x, role)
                h = h + (is_query * self.prompt_summary(change)[:, None, :]).view(s, n, m, d)
        for block in self.blocks:
            h = block(h, mask)
        return self.norm_out(h.reshape(s, n, m * d))

    @staticmethod
    def prompt_change(x: Tensor, role: Tensor) -> tuple[Tensor, Tensor]:
        """The prompt's mean change per set, shape (n_sets, n_genes), and the query-row
        indicator, shape (n_sets, n_cells, 1)."""
        w_pert = (role == ROLE_PERTURBED).to(x.dtype)
        w_ctrl = (role == ROLE_CONTROL).to(x.dtype)
        mean_p = (w_pert[..., None] * x).sum(1) / w_pert.sum(1, keepdim=True).clamp_min(1.0)
        mean_c = (w_ctrl[..., None] * x).sum(1) / w_ctrl.sum(1, keepdim=True).clamp_min(1.0)
        return mean_p - mean_c, (role == ROLE_QUERY).to(x.dtype)[..., None]

    def forward(self, x: Tensor, role: Tensor | None = None, hidden: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        """Predicted expression, shape (n_sets, n_cells, n_genes).

        Gaussian head: log1p means (visible input added back). NB head: log of the mean
        fraction of each cell's library per gene (log-softmax over genes)."""
        y = self.out(self.encode(x, role, hidden, mask))
        if self.head == "nb":
            return torch.log_softmax(y, dim=-1)
        visible = x if hidden is None else x.masked_fill(hidden[:, None, :], 0.0)
        if self.change_gain is not None and role is not None:
            change, is_query = self.prompt_change(x, role if role.dim() == 2 else
                                                  role.expand(x.shape[0], x.shape[1]))
            y = y + is_query * (self.change_gain * change)[:, None, :]
        return visible + y


def prompt_mask(n_prompt: int, n_query: int, device: torch.device | None = None) -> Tensor:
    """Across-cell mask for a [prompt | query] set, shape (n, n): prompt rows see only prompt
    rows; query rows see everything."""
    n = n_prompt + n_query
    allowed = torch.ones(n, n, dtype=torch.bool, device=device)
    allowed[:n_prompt, n_prompt:] = False
    return allowed


def masked_reconstruction_loss(pred: Tensor, target: Tensor, hidden: Tensor) -> Tensor:
    """Mean squared error over hidden entries only (Gaussian likelihood, unit variance).

    pred, target : (n_sets, n_cells, n_genes); hidden : bool (n_sets, n_genes)
    """
    w = hidden[:, None, :].expand_as(target).to(pred.dtype)
    return ((pred - target).pow(2) * w).sum() / w.sum().clamp_min(1.0)


def nb_log_likelihood(counts: Tensor, mean: Tensor, log_theta: Tensor) -> Tensor:
    """Negative-binomial log-likelihood per entry (mean/dispersion parameterisation).

    counts, mean : same shape; log_theta broadcastable (per gene). Var = mean + mean^2/theta.
    """
    theta = log_theta.exp()
    log_theta_mu = torch.log(theta + mean + 1e-8)
    return (theta * (log_theta.expand_as(mean) - log_theta_mu)
            + counts * (torch.log(mean + 1e-8) - log_theta_mu)
            + torch.lgamma(counts + theta) - torch.lgamma(theta) - torch.lgamma(counts + 1))
