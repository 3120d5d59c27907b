"""Perturbation labels: combos joined by a separator, targets mapped to measured genes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def components(label: str, separator: str = "+", control: str | None = None) -> tuple[str, ...]:
    """Split a perturbation label into its single perturbations.

    'A+B' -> ('A', 'B'); components equal to the control label are dropped ('A+ctrl' -> ('A',)).
    The control itself has no components.
    """
    if control is not None and label == control:
        return ()
    parts = tuple(p.strip() for p in str(label).split(separator) if p.strip())
    if control is not None:
        parts = tuple(p for p in parts if p != control)
    return parts


def is_combo(label: str, separator: str = "+", control: str | None = None) -> bool:
    return len(components(label, separator, control)) > 1


def map_targets(targets: Iterable[str], genes: Sequence[str]) -> dict[str, int]:
    """Map perturbation targets to measured gene indices (exact name, then case-insensitive).

    Targets that are not measured genes (drugs, cytokines, unmeasured genes) are absent.
    """
    genes = [str(g) for g in genes]
    exact = {g: i for i, g in enumerate(genes)}
    upper: dict[str, int] = {}
    for i, g in enumerate(genes):
        upper.setdefault(g.upper(), i)
    out: dict[str, int] = {}
    for t in targets:
        if t in exact:
            out[t] = exact[t]
        elif t.upper() in upper:
            out[t] = upper[t.upper()]
    return out


def single_vocabulary(labels: Iterable[str], separator: str, control: str) -> list[str]:
    """Sorted unique single perturbations appearing in ``labels`` (combos split)."""
    out: set[str] = set()
    for lab in labels:
        out.update(components(lab, separator, control))
    return sorted(out)


def as_str_array(values) -> np.ndarray:
    return np.asarray([str(v) for v in values], dtype=object)


def canonical_label(label: str, separator: str, control: str) -> str:
    """The canonical form of a label: whitespace stripped, control components dropped.

    ' A + control ' -> 'A'; 'control+control' -> control; 'A+B' stays 'A+B' (order kept).
    """
    text = str(label).strip()
    if text == control:
        return control
    parts = components(text, separator, control)
    return separator.join(parts) if parts else control


def canonical_labels(labels: np.ndarray, separator: str, control: str
                     ) -> tuple[np.ndarray, dict[str, str]]:
    """Canonical labels for an array, and the {original: canonical} labels that changed."""
    uniques, inverse = np.unique(np.asarray(labels, dtype=str), return_inverse=True)
    canon = np.asarray([canonical_label(u, separator, control) for u in uniques], dtype=object)
    changed = {str(u): str(c) for u, c in zip(uniques, canon, strict=True) if u != c}
    return canon[inverse], changed
