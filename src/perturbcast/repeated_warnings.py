"""Show a warning once per model over a benchmark's folds and seeds, not once per fit.

A benchmark fits each model on every fold (and seed), and a warning about the model's input
(e.g. "the built-in gene table has no row for ...; using embeddings='train'") comes back on
every fit with other counts and examples. :class:`WarnOnce` shows the first of each kind
and counts the rest; :meth:`WarnOnce.repeats_line` says how many were not shown.

It sits where Python shows a warning (``warnings.showwarning``), after the filters: a warning
the caller's filters ignore is neither shown nor counted, one they turn into an error raises
where it is issued, and the first of each kind is shown at once, not after the fit.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

#: What changes between repeats of one warning: its numbers (outside quoted names) and its
#: examples ("(e.g. ...)"). Quoted names (a context, a batch) keep two warnings apart.
_EXAMPLES = re.compile(r"\(e\.g\.[^()]*\)|e\.g\. '[^']*'")
_QUOTED_OR_NUMBER = re.compile(r"('[^']*')|\d+(?:\.\d+)?")


def warning_kind(message: str) -> str:
    """The text of a warning without its examples and the numbers outside quoted names."""
    text = _EXAMPLES.sub("(e.g. …)", message)
    return _QUOTED_OR_NUMBER.sub(lambda m: m.group(1) or "…", text)


class WarnOnce:
    """Shows the first warning of each (model, category, kind) and counts the later ones."""

    def __init__(self) -> None:
        self.repeats: Counter[str] = Counter()
        self._seen: set[tuple[str, type[Warning], str]] = set()

    @contextmanager
    def model(self, name: str) -> Iterator[None]:
        """Within the body, warnings of a kind already shown for ``name`` are counted, not
        shown."""
        shown = warnings.showwarning

        def show_new(message, category, filename, lineno, file=None, line=None):
            key = (name, category, warning_kind(str(message)))
            if key in self._seen:
                self.repeats[name] += 1
                return
            self._seen.add(key)
            shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show_new
        try:
            yield
        finally:
            warnings.showwarning = shown

    def repeats_line(self, where: str = "other folds or seeds") -> str | None:
        """One line on the warnings not shown again, or None when there were none."""
        if not self.repeats:
            return None
        parts = ", ".join(f"{n} ({k})" for n, k in self.repeats.items())
        total = sum(self.repeats.values())
        return (f"{total} repeat{'s' if total > 1 else ''} of warnings shown above (the same "
                f"warning on {where}) not shown again, by model: {parts}.")


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the command line shows it: ``warning: <message>``, without the source
    file and line of code (``UserWarning`` unnamed; other categories named)."""
    kind = "" if category is UserWarning else f" ({category.__name__})"
    return f"warning{kind}: {message}\n"
