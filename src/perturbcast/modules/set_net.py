"""The network shared by the flow and transition models: condition encoder + set encoder.

It maps a set of cells x (flow: the state x_t at time t; transition: the control set) to the
predicted perturbed set as ``x + r * shift(p) + f(x, condition)``: ``shift`` is linear in the
perturbation vector p, so with combos pooled as sums of their singles the shift of a combo is
the sum of its singles' shifts (the additive baseline is a special case of the model); the set
encoder f adds what depends on the cells, the context and interactions. r is the remaining
path, 1 - t, for the flow (x_t has covered t of the way) and 1 for the transition.
"""

from __future__ import annotations

from torch import Tensor, nn

from .perturbation import ConditionEncoder, PerturbationEncoder
from .set_encoder import SetEncoder


class ConditionalSetNet(nn.Module):
    """Predict the perturbed set from a set of cells and its condition.

    Parameters
    ----------
    n_in : features per cell (latent or gene dimensions)
    dim, depth, n_heads : set encoder width, blocks and heads (condition vectors have size dim)
    n_learned, n_features : learned perturbation components / fixed feature size
    n_contexts, n_batches : known contexts / batches (index 0 is "unknown")
    use_time : condition on flow time (the flow model) or not (the transition model)
    """

    def __init__(self, n_in: int, dim: int, depth: int, n_heads: int, n_learned: int,
                 n_features: int, n_contexts: int, n_batches: int, use_time: bool,
                 learned_dropout: float = 0.5) -> None:
        super().__init__()
        pert = PerturbationEncoder(n_learned, n_features, dim, learned_dropout)
        self.condition = ConditionEncoder(pert, n_contexts, n_batches, dim, use_time)
        self.encoder = SetEncoder(n_in, n_in, dim, depth, n_heads, cond_dim=dim)
        nn.init.zeros_(self.encoder.out.weight)  # start as x + shift: no random per-cell noise
        nn.init.zeros_(self.encoder.out.bias)
        self.shift = nn.Linear(dim, n_in, bias=False)
        nn.init.normal_(self.shift.weight, std=0.01)

    def forward(self, x: Tensor, cond: dict[str, Tensor], t: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        """x : (n_sets, set_size, n_in) -> predicted perturbed cells, same shape.

        cond : learned_idx, features, has_features, dose, context, batch (leading n_sets)
        t : Tensor, shape (n_sets,), flow time (when ``use_time``)
        mask : Tensor of bool, shape (n_sets, set_size); True for real cells
        """
        c, p = self.condition(cond, t)
        shift = self.shift(p)[:, None, :]
        if t is not None:
            shift = shift * (1 - t).view(-1, 1, 1)
        return x + shift + self.encoder(x, c, mask)
