"""SIGTERM (a scheduler's preemption, ``kill``) stops a command cleanly, whatever it is doing.

Python's default action for SIGTERM ends the process at once: a temporary file being written
(``.pred.h5ad.*`` beside ``--out``, possibly gigabytes) stays behind, and nothing says what
happened. The CLI runs every command under :func:`raise_on_sigterm`, so SIGTERM raises
:class:`~perturbcast.errors.Terminated` in the main thread: :func:`~perturbcast.utils.
atomic_path` removes its temporary file, and the CLI prints one line and exits with 143. The
first signal ignores later ones until the command has cleaned up (schedulers repeat SIGTERM).

During ``trainer.fit`` Lightning handles SIGTERM itself once its handler is installed: it
finishes the step and stops at a batch boundary (a checkpoint being written is not cut in
half), then :func:`~perturbcast.train.lightning.train_network` raises ``Terminated`` with the
step. Lightning also calls the handler it found installed, so :func:`lightning_handles_sigterm`
puts in one that stands aside when called through Lightning and raises otherwise (before
Lightning installs its handler, in its setup, and after it removes it).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from .errors import Terminated

Handler = Callable[[int, FrameType | None], Any] | int | None


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the cleanup finish
    raise Terminated(None)


def _unless_lightning(signum: int, frame: FrameType | None) -> None:
    if signal.getsignal(signal.SIGTERM) is _unless_lightning:  # Lightning's is not installed
        _raise_terminated(signum, frame)
    # else: called by Lightning's handler, which stops the fit at the next batch boundary


@contextmanager
def _sigterm_handler(handler: Handler, only_over: Handler | None = None) -> Iterator[None]:
    """Install ``handler`` for the block (only when ``only_over`` is installed, if given)
    and put the previous one back; nothing changes off the main thread, where handlers cannot
    be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if only_over is not None and previous is not only_over:
        yield
        return
    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        # after a signal (ignored until the outermost block has cleaned up), an inner block
        # keeps ignoring; None: set outside Python, the default is the closest to restore
        if only_over is None or signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def raise_on_sigterm() -> contextlib.AbstractContextManager[None]:
    """Within the block, SIGTERM raises ``Terminated(None)`` (no training step known)."""
    return _sigterm_handler(_raise_terminated)


def lightning_handles_sigterm() -> contextlib.AbstractContextManager[None]:
    """Around ``trainer.fit`` within :func:`raise_on_sigterm`: SIGTERM still raises until
    Lightning installs its own handler and after it removes it, and is left to Lightning in
    between (ours would raise inside a training step). A caller's own handler (library use)
    is left alone."""
    return _sigterm_handler(_unless_lightning, only_over=_raise_terminated)


def ignore_further_sigterm() -> None:
    """After Lightning stopped on SIGTERM: ignore repeats while the command cleans up (only
    where our handler is installed, i.e. under :func:`raise_on_sigterm`)."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) in (_raise_terminated, _unless_lightning)):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def stopped_line(step: int | None) -> str:
    """What the CLI prints after ``Terminated(step)``."""
    if step is None:
        return ("received SIGTERM outside a training step; stopped, and the file it was "
                "writing was removed; run the same command again (with --overwrite if --out "
                "now exists; train: with --resume if the .resume folder beside --out holds a "
                "checkpoint).")
    return (f"training received SIGTERM at step {step}; nothing was written to --out; run the "
            "same command again (train: with --resume to continue from its last checkpoint, "
            "--checkpoint-every; benchmark and demo start over).")
