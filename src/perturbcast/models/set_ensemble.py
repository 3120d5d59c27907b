"""Ensembles of set models: combine the members' predicted cells and measure their spread."""

from __future__ import annotations

import contextlib

import numpy as np

from ..train.resume import sub_resume
from .latent import LatentSpace


def combine_members(changes: list[np.ndarray], latent: LatentSpace) -> tuple[np.ndarray, float]:
    """One prediction from k members, and the members' spread.

    Parameters
    ----------
    changes : k arrays, shape (n_cells, d): each member's latent change of every cell
    latent : the model's latent space (to measure the spread in genes)

    Returns
    -------
    change : array, shape (n_cells, d): cell i from member i mod k, moved so that the mean
        change is the members' average mean change (identical members give member 0 exactly)
    spread : root mean over genes of the variance across members of their mean change (in
        log1p expression); 0 for one member
    """
    if len(changes) == 1:
        return changes[0], 0.0
    means = np.stack([c.mean(0) for c in changes])  # (k, d)
    dev = means - means[0]  # exact zeros for identical members
    avg_minus = dev.mean(0) - dev  # the members' average minus each member's mean
    member = np.arange(changes[0].shape[0]) % len(changes)
    out = np.stack(changes)[member, np.arange(member.size)] + avg_minus[member]
    genes = latent.decode_change(dev)  # (k, n_genes), relative to member 0
    return out, float(np.sqrt(genes.var(0, ddof=1).mean()))


def member_resume(m: int) -> contextlib.AbstractContextManager:
    """Resumable training of ensemble member ``m`` > 0 keeps its own ``last.ckpt`` (in
    ``member{m}/``, see :func:`~perturbcast.train.resume.sub_resume`); member 0 uses the run's
    own settings."""
    return contextlib.nullcontext() if m == 0 else sub_resume(f"member{m}")
