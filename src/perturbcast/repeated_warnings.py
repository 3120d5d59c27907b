"""Show a warning once per model over a benchmark's folds and seeds, not once per fit.

A benchmark fits each model on every fold (and seed), and a warning about the model's input
(e.g. "the built-in gene table has no row for ...; using embeddings='train'") comes back on
every fit with other counts and examples. :class:`WarnOnce` lets the first of each kind
through and counts the rest; :meth:`WarnOnce.repeats_line` says how many were not shown.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

#: Numbers and quoted names: what changes between repeats of one warning.
_DETAIL = re.compile(r"\d+(\.\d+)?|'[^']*'|\([^()]*\)")


def warning_kind(message: str) -> str:
    """The text of a warning without its numbers, quoted names and bracketed details."""
    return _DETAIL.sub("…", message)


class WarnOnce:
    """Collects the warnings of fits: the first of each (model, category, kind) is shown,
    later ones are counted."""

    def __init__(self, ignore: tuple[tuple[str, type[Warning]], ...] = ()) -> None:
        self.ignore = ignore
        self.repeats: Counter[str] = Counter()
        self._seen: set[tuple[str, type[Warning], str]] = set()

    @contextmanager
    def model(self, name: str) -> Iterator[None]:
        """Record the warnings raised in the body and show the new kinds for ``name``."""
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for message, category in self.ignore:
                    warnings.filterwarnings("ignore", message=message, category=category)
                yield
        finally:  # outside the recording: shown under the caller's filters
            self._replay(name, caught)

    def _replay(self, name: str, caught: list[warnings.WarningMessage]) -> None:
        for w in caught:
            key = (name, w.category, warning_kind(str(w.message)))
            if key in self._seen:
                self.repeats[name] += 1
                continue
            self._seen.add(key)
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno or 0)

    def repeats_line(self) -> str | None:
        """One line on the warnings not shown again, or None when there were none."""
        if not self.repeats:
            return None
        parts = ", ".join(f"{n} ({k})" for n, k in self.repeats.items())
        total = sum(self.repeats.values())
        return (f"{total} repeat{'s' if total > 1 else ''} of warnings shown above (the same "
                f"warning on other folds or seeds) not shown again, by model: {parts}.")
