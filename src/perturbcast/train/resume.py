"""Resumable training settings, set around a fit by the CLI (``train --resume``).

Kept apart from :mod:`perturbcast.train.lightning` so setting them does not import torch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Resume:
    """Where resumable training keeps ``last.ckpt``, how often, and whether to continue."""

    directory: Path
    every_n_steps: int = 50
    resume: bool = False

    @property
    def last(self) -> Path:
        return self.directory / "last.ckpt"


_RESUME: ContextVar[Resume | None] = ContextVar("perturbcast_resume", default=None)


@contextlib.contextmanager
def resumable(directory: str | os.PathLike, every_n_steps: int = 50,
              resume: bool = False) -> Iterator[Resume]:
    """Make ``train_network`` calls in this block resumable (:mod:`perturbcast.train.lightning`).
    """
    token = _RESUME.set(Resume(Path(directory), every_n_steps, resume))
    try:
        yield _RESUME.get()
    finally:
        _RESUME.reset(token)


def current_resume() -> Resume | None:
    """The settings of the innermost :func:`resumable` block, or None outside one."""
    return _RESUME.get()


def sub_resume(name: str) -> contextlib.AbstractContextManager:
    """A nested training of a resumable run (an ensemble member, a ``shrink=auto`` probe) keeps
    its own ``last.ckpt`` in ``<run directory>/<name>/``, continued only when one was written (a
    run killed before it starts it afresh); outside a resumable run, nothing."""
    r = current_resume()
    if r is None:
        return contextlib.nullcontext()
    directory = r.directory / name
    return resumable(directory, r.every_n_steps, r.resume and (directory / "last.ckpt").exists())
