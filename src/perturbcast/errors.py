"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class InputError(ValueError):
    """Bad user input (file, column, value, option).

    The CLI prints the message on one line and exits with code 2; no traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class Terminated(SystemExit):
    """The command received SIGTERM (a scheduler's preemption, ``kill``): exit code 143.

    ``step`` is the training step it stopped at, or None outside training. Lightning turns
    SIGTERM into a ``SystemExit`` with code 0, so a killed run looked like a finished one that
    wrote nothing; outside training Python's default action left temporary files behind (see
    :mod:`perturbcast.sigterm`). The CLI prints one line saying how to continue.
    """

    def __init__(self, step: int | None) -> None:
        super().__init__(143)
        self.step = step


def suggest(value: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean: a, b?' for close matches of ``value`` in ``choices`` (or '')."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), choices, n=n, cutoff=0.5)
    if not close:
        lowered = {c.lower(): c for c in choices}
        if str(value).lower() in lowered:
            close = [lowered[str(value).lower()]]
    return f" Did you mean: {', '.join(repr(c) for c in close)}?" if close else ""


def preview(items: Iterable[str], limit: int = 12) -> str:
    """Comma-joined preview of at most ``limit`` items, with a '(+N more)' tail."""
    items = [str(i) for i in items]
    head = ", ".join(items[:limit])
    return head + (f" (+{len(items) - limit} more)" if len(items) > limit else "")
