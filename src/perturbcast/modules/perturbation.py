"""Perturbation and condition encoders: one vector per set from labels, features and dose.

A perturbation is a set of components (a single gene, a drug, or the singles of a combo). Each
component contributes a learned embedding (when it was seen in training) plus a projection of
a fixed feature vector (a gene-feature row or a user-supplied embedding, when one exists);
components are summed (combos pool their singles), then the dose enters as a scalar.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .blocks import SwiGLU


class PerturbationEncoder(nn.Module):
    """Embed perturbations given as padded component lists.

    Parameters
    ----------
    n_learned : number of components with a learned embedding (index 0 is reserved: "none")
    n_features : size of the fixed feature vector per component (0: no features)
    dim : output size
    learned_dropout : training-time probability of dropping a component's learned embedding
        when it also has features, so the feature path alone learns to carry the effect (the
        path that unseen perturbations use)
    """

    def __init__(self, n_learned: int, n_features: int, dim: int,
                 learned_dropout: float = 0.5) -> None:
        super().__init__()
        self.learned = nn.Embedding(n_learned + 1, dim)
        nn.init.normal_(self.learned.weight, std=0.02)
        self.feature_proj = (nn.Sequential(nn.Linear(n_features, dim), nn.SiLU(),
                                           nn.Linear(dim, dim)) if n_features else None)
        self.dose_proj = nn.Linear(1, dim)
        self.learned_dropout = learned_dropout

    def forward(self, learned_idx: Tensor, features: Tensor, has_features: Tensor,
                dose: Tensor) -> Tensor:
        """Perturbation vectors, shape (n_sets, dim).

        Parameters
        ----------
        learned_idx : Tensor of long, shape (n_sets, n_components); 0 where none
        features : Tensor, shape (n_sets, n_components, n_features)
        has_features : Tensor of bool, shape (n_sets, n_components)
        dose : Tensor, shape (n_sets,); log1p-scaled dose, 0 when not given
        """
        emb = self.learned(learned_idx) * (learned_idx > 0).unsqueeze(-1)
        if self.feature_proj is not None:
            if self.training and self.learned_dropout > 0:
                drop = (torch.rand(learned_idx.shape, device=emb.device) < self.learned_dropout)
                emb = emb * ~(drop & has_features).unsqueeze(-1)
            feat = self.feature_proj(features) * has_features.unsqueeze(-1)
            emb = emb + feat
        return emb.sum(1) + self.dose_proj(dose.unsqueeze(-1))


def time_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of flow time, shape (n,) -> (n, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / half)
    arg = t.float()[:, None] * freqs[None, :] * 1000.0
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


class ConditionEncoder(nn.Module):
    """Perturbation + context + batch (+ flow time) -> one condition vector per set.

    Context and batch index 0 means "unknown" (unseen at training, or dropped out); the model
    also sees the control set itself, which carries the context for unseen contexts.

    Parameters
    ----------
    n_contexts, n_batches : numbers of known contexts / batches (index 0 is "unknown")
    """

    def __init__(self, perturbation: PerturbationEncoder, n_contexts: int, n_batches: int,
                 dim: int, use_time: bool) -> None:
        super().__init__()
        self.perturbation = perturbation
        self.context = nn.Embedding(n_contexts + 1, dim)
        self.batch = nn.Embedding(n_batches + 1, dim)
        self.use_time = use_time
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim)) \
            if use_time else None
        self.mix = nn.Sequential(nn.LayerNorm(dim), SwiGLU(dim))
        self.dim = dim

    def forward(self, cond: dict[str, Tensor], t: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        """(condition vectors, perturbation vectors), both of shape (n_sets, dim).

        cond holds learned_idx, features, has_features, dose, context, batch (n_sets, ...).
        """
        p = self.perturbation(cond["learned_idx"], cond["features"], cond["has_features"],
                              cond["dose"])
        h = p + self.context(cond["context"]) + self.batch(cond["batch"])
        if self.use_time:
            h = h + self.time(time_embedding(t, self.dim))
        return h + self.mix(h), p
