"""Sets for the in-context model: masked pretraining sets, [prompt | query] sets, prompt sources.

Prompt rule for a condition (perturbation P, target context c), used alike in fine-tuning and
prediction, first match wins:

1. ``other_contexts``: cells of P in contexts other than c (STACK's setting: the response seen
   in other cell types / lines);
2. ``components``: P is a combination and cells of its singles exist (any context) — the
   "related perturbations" framing for single-context screens such as Norman 2019;
3. ``same_context``: cells of P in c itself (single-context data: in fine-tuning they are split
   at random into a prompt half and a target half each draw).

No match: :class:`~perturbcast.errors.InputError` naming the condition. Prompt controls are
control cells of the contexts the prompt's perturbed cells come from (any control otherwise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import InputError, suggest
from ..modules.tabular import ROLE_CONTROL, ROLE_PERTURBED, ROLE_QUERY


def prompt_cells(perts: np.ndarray, ctxs: np.ndarray, pert: str, ctx: str,
                 components: Callable[[str], tuple[str, ...]]) -> tuple[np.ndarray, str]:
    """Indices of the prompt's perturbed cells and the rule that chose them ('' if none)."""
    is_p = perts == pert
    idx = np.flatnonzero(is_p & (ctxs != ctx))
    if idx.size:
        return idx, "other_contexts"
    parts = components(pert)
    if len(parts) > 1:
        idx = np.flatnonzero(np.isin(perts, list(parts)))
        if idx.size:
            return idx, "components"
    idx = np.flatnonzero(is_p)
    return idx, ("same_context" if idx.size else "")


def matched_controls(ctrl_idx: np.ndarray, ctrl_ctx: np.ndarray, ctxs: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """One control per entry of ``ctxs``, from the same context when it has controls."""
    out = np.empty(len(ctxs), np.int64)
    for c in np.unique(ctxs):
        sel = ctxs == c
        pool = ctrl_idx[ctrl_ctx == c]
        pool = pool if pool.size else ctrl_idx
        out[sel] = rng.choice(pool, int(sel.sum()), replace=True)
    return out


def draw(pool: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.choice(pool, n, replace=pool.size < n)


def roles(n_prompt: int, n_query: int) -> np.ndarray:
    """Row roles of a [perturbed prompt | control prompt | query] set, shape (n,)."""
    return np.repeat([ROLE_PERTURBED, ROLE_CONTROL, ROLE_QUERY], [n_prompt, n_prompt, n_query])


@dataclass
class PretrainSampler:
    """Sets from one (context, batch, perturbation) group with one hidden gene subset each."""

    groups: list[np.ndarray]
    n_genes: int
    set_size: int
    mask_min: float = 0.1
    mask_max: float = 0.8

    def sample(self, n_sets: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Returns cells (n_sets, set_size) int and hidden (n_sets, n_genes) bool."""
        cells = np.stack([draw(self.groups[g], self.set_size, rng)
                          for g in rng.integers(0, len(self.groups), n_sets)])
        hidden = np.zeros((n_sets, self.n_genes), bool)
        for k in range(n_sets):
            n_hide = max(1, int(round(rng.uniform(self.mask_min, self.mask_max) * self.n_genes)))
            hidden[k, rng.permutation(self.n_genes)[:n_hide]] = True
        return cells, hidden


class InContextSampler:
    """[prompt | query] sets with targets, over training conditions (perturbation, context).

    Parameters
    ----------
    perts, ctxs : labels of the training cells
    control : control label; components : label -> its singles
    n_prompt : perturbed prompt cells (and as many prompt controls); n_query : query cells
    held_out : bool per cell, optional: validation cells. Training sets (``validation=False``)
        never use them; validation sets take their targets from them (and their queries from
        held-out controls of the target context when it has any), their prompts from the
        other cells, and never split a ``same_context`` prompt at random
    validation : see ``held_out``; a validation sampler may have no conditions (no error)
    """

    def __init__(self, perts: np.ndarray, ctxs: np.ndarray, control: str,
                 components: Callable[[str], tuple[str, ...]], n_prompt: int,
                 n_query: int, held_out: np.ndarray | None = None,
                 validation: bool = False) -> None:
        self.n_prompt, self.n_query, self.validation = n_prompt, n_query, validation
        held = np.zeros(len(perts), bool) if held_out is None else np.asarray(held_out, bool)
        is_ctrl = perts == control
        self.ctrl_idx = np.flatnonzero(is_ctrl & ~held)
        self.ctrl_ctx = ctxs[self.ctrl_idx]
        self.conditions: list[tuple[np.ndarray, np.ndarray, str, np.ndarray]] = []
        pert_cells = np.flatnonzero(~is_ctrl & ~held)  # the prompt pool
        is_target = ~is_ctrl & (held if validation else ~held)
        keys = sorted({(perts[i], ctxs[i]) for i in np.flatnonzero(is_target)})
        for p, c in keys:
            target = np.flatnonzero(is_target & (perts == p) & (ctxs == c))
            prompt, rule = prompt_cells(perts[pert_cells], ctxs[pert_cells], p, c, components)
            queries = self.ctrl_idx[self.ctrl_ctx == c]
            if validation:
                held_queries = np.flatnonzero(is_ctrl & held & (ctxs == c))
                queries = held_queries if held_queries.size else queries
            if not queries.size or not prompt.size or (
                    rule == "same_context" and not validation and target.size < 4):
                continue
            self.conditions.append((target, pert_cells[prompt], rule, queries))
        self.ctxs = ctxs
        if not self.conditions and not validation:
            raise InputError("incontext: no training condition has both prompt cells and "
                             "control cells in its context; it needs perturbed and control "
                             "cells.")

    def sample(self, n_sets: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Returns rows (n_sets, 2 * n_prompt + n_query) and targets (n_sets, n_query)."""
        p, q = self.n_prompt, self.n_query
        rows = np.empty((n_sets, 2 * p + q), np.int64)
        targets = np.empty((n_sets, q), np.int64)
        for k, ci in enumerate(rng.integers(0, len(self.conditions), n_sets)):
            target, prompt, rule, queries = self.conditions[ci]
            if rule == "same_context" and not self.validation:
                perm = rng.permutation(target)
                half = perm.size // 2
                prompt, target = perm[:half], perm[half:]
            rows[k, :p] = draw(prompt, p, rng)
            rows[k, p:2 * p] = matched_controls(self.ctrl_idx, self.ctrl_ctx,
                                                self.ctxs[rows[k, :p]], rng)
            rows[k, 2 * p:] = draw(queries, q, rng)
            targets[k] = draw(target, q, rng)
        return rows, targets


class PromptSource:
    """Where prompts come from: labelled cells in the model's gene order.

    Parameters
    ----------
    rows : idx -> expression, shape (len(idx), n_genes), log1p in the model's gene order
    perts, ctxs : labels per cell; control : control label
    components : label -> its singles
    """

    def __init__(self, rows: Callable[[np.ndarray], np.ndarray], perts: np.ndarray,
                 ctxs: np.ndarray, control: str,
                 components: Callable[[str], tuple[str, ...]], what: str) -> None:
        self.rows, self.perts, self.ctxs = rows, perts.astype(str), ctxs.astype(str)
        self.control, self.components, self.what = control, components, what
        self.ctrl_idx = np.flatnonzero(self.perts == control)

    def prompt(self, pert: str, ctx: str, n_prompt: int,
               rng: np.random.Generator) -> np.ndarray:
        """Prompt rows [perturbed | controls], shape (2 * n_prompt, n_genes)."""
        non_ctrl = np.flatnonzero(self.perts != self.control)
        idx, rule = prompt_cells(self.perts[non_ctrl], self.ctxs[non_ctrl], pert, ctx,
                                 self.components)
        if not rule:
            known = set(self.perts[non_ctrl])
            hint = "" if pert in known else suggest(pert, sorted(known))
            then = " If it is a new perturbation, pass" if hint else " Pass"
            raise InputError(f"no prompt cells for perturbation {pert!r} (context {ctx!r}) in "
                             f"{self.what}.{hint}{then} prompt= (--prompt FILE) with cells of "
                             f"it.")
        if not self.ctrl_idx.size:
            raise InputError(f"{self.what} has no control cells; the prompt needs controls "
                             f"beside the perturbed cells.")
        pick = draw(non_ctrl[idx], n_prompt, rng)
        ctrl = matched_controls(self.ctrl_idx, self.ctxs[self.ctrl_idx], self.ctxs[pick], rng)
        order = np.concatenate([pick, ctrl])
        uniq, inv = np.unique(order, return_inverse=True)
        return self.rows(uniq)[inv]


class StoreRows:
    """Training rows ``idx`` of a store-backed Experiment, read per batch instead of loaded:
    ``rows[cells]`` (a tensor of positions, any shape) -> expression, shape + (n_genes,),
    the same values as indexing the dense rows (each batch's cells gathered from the store's
    memory maps; random cells, not the store sampler's contiguous runs)."""

    def __init__(self, exp, idx: np.ndarray) -> None:
        self.exp, self.idx = exp, idx
        self.shape = (idx.size, exp.n_genes)

    def __getitem__(self, cells):
        import torch

        cells = np.asarray(cells)
        uniq, inv = np.unique(cells, return_inverse=True)
        x = self.exp.rows(self.idx[uniq])[inv.reshape(cells.shape)]
        return torch.from_numpy(np.ascontiguousarray(x))
