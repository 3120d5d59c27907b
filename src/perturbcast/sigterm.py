"""SIGTERM (a scheduler's preemption, ``kill``) stops a command cleanly, whatever it is doing.

Python's default action for SIGTERM ends the process at once: a temporary file being written
(``.pred.h5ad.*`` beside ``--out``, possibly gigabytes) stays behind, and nothing says what
happened. The CLI runs every command under :func:`raise_on_sigterm`, so SIGTERM raises
:class:`~perturbcast.errors.Terminated` in the main thread: :func:`~perturbcast.utils.
atomic_path` removes its temporary file, and the CLI prints one line and exits with 143.

During ``trainer.fit`` Lightning handles SIGTERM itself: it finishes the step and stops at a
batch boundary (a checkpoint being written is not cut in half), then
:func:`~perturbcast.train.lightning.train_network` raises ``Terminated`` with the step.
Lightning calls any handler already installed as well, so :func:`lightning_handles_sigterm`
takes ours away for the duration of the fit.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import Terminated


def _raise_terminated(signum, frame) -> None:
    raise Terminated(None)


def _swap_handler(handler) -> object | None:
    """Install ``handler`` for SIGTERM; the previous one, or None off the main thread
    (only the main thread may set signal handlers: nothing is changed there)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


@contextmanager
def raise_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated(None)`` (no training step known)."""
    previous = _swap_handler(_raise_terminated)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@contextmanager
def lightning_handles_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM has its default action unless Lightning installs its own
    (it does for ``trainer.fit``): our raising handler must not run inside a training step."""
    previous = _swap_handler(signal.SIG_DFL)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def stopped_line(step: int | None) -> str:
    """What the CLI prints after ``Terminated(step)``."""
    if step is None:
        return ("received SIGTERM outside a training step; nothing was written to --out "
                "(partial files removed); run the same command again (train: with --resume "
                "when the run's .resume folder beside --out holds a checkpoint).")
    return (f"training received SIGTERM at step {step}; nothing was written to --out; run the "
            "same command with --resume to continue from its last checkpoint "
            "(--checkpoint-every).")
