"""Parameter values of the right kind, checked when a model is made (before any work).

A parameter whose default is a bool, an int or a float takes a value of that kind (an int
where the default is a float); ``--param max_steps=abc`` is then one line naming the
parameter, not a traceback after minutes of fitting. Parameters whose default is text or
None, and a model's ``loose_params`` (e.g. ``shrink``: a number or ``auto``), are checked by
the model itself.

Every number must also be finite and inside its parameter's range (:data:`RANGES`; a
parameter not listed there is at least 0): ``lr=-1`` or ``max_epochs=inf`` is refused when
the model is made, not minutes later, and a saved config never holds a number JSON cannot
write.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InputError

#: (low, high, low_open, high_open) per parameter name, shared by every model that has it;
#: None: unbounded on that side. Unlisted numeric parameters: at least 0 (``k`` and
#: ``inner_folds`` are checked further by their models, with their own messages).
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    **dict.fromkeys(("lr", "max_epochs"), (0, None, True, False)),
    **dict.fromkeys(("depth", "dim", "n_heads", "n_sets", "set_size", "steps", "n_latent",
                     "n_components", "n_modules", "n_prompt", "bank_cells", "bank_controls",
                     "val_every", "num_nodes", "n_seeds", "devices"),
                    (1, None, False, False)),
    **dict.fromkeys(("context_dropout", "learned_dropout", "val_fraction"), (0, 1, False, True)),
    **dict.fromkeys(("mask_min", "mask_max", "shrink"), (0, 1, False, False)),
}


def _range_text(low, high, low_open, high_open) -> str:
    if high is None:
        return f"{'above' if low_open else 'at least'} {low:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"



def check_param_ranges(who: str, params: Mapping[str, Any],
                       defaults: Mapping[str, Any]) -> None:
    """Raise a one-line :class:`InputError` for the first numeric value that is not finite or
    outside its range (:data:`RANGES`); text, None, bools and lists are left to the model.
    The message suggests the parameter's default from ``defaults``."""
    for key, value in params.items():
        if (isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real)):
            continue
        low, high, low_open, high_open = RANGES.get(key, (0, None, False, False))
        v = float(value)
        ok = (np.isfinite(v) and (v > low if low_open else v >= low)
              and (high is None or (v < high if high_open else v <= high)))
        if not ok:
            example = defaults.get(key)
            hint = f"; e.g. --param {key}={example}" if example is not None else ""
            raise InputError(f"{who}: {key}={value!r} is out of range (a finite number "
                             f"{_range_text(low, high, low_open, high_open)}){hint}.")


def _kind(default: Any) -> tuple[tuple[type, ...], str] | None:
    if isinstance(default, bool | np.bool_):
        return (bool, np.bool_), "true or false"
    if isinstance(default, numbers.Integral):
        return (numbers.Integral,), "an integer"
    if isinstance(default, numbers.Real):
        return (numbers.Real,), "a number"
    return None


def check_param_types(who: str, params: Mapping[str, Any], defaults: Mapping[str, Any],
                      loose: tuple[str, ...] = ()) -> dict[str, Any]:
    """Raise a one-line :class:`InputError` for the first value of the wrong kind; return the
    parameters with whole-number floats of integer parameters as ints (``1e3`` from
    ``--param max_steps=1e3`` is 1000)."""
    out = dict(params)
    for key, value in params.items():
        kind = None if key in loose else _kind(defaults.get(key))
        if kind is None:
            continue
        types, words = kind
        is_bool = isinstance(value, bool | np.bool_)
        if (numbers.Integral in types and not is_bool and isinstance(value, numbers.Real)
                and np.isfinite(value) and float(value).is_integer()):
            out[key] = int(value)
            continue
        if not isinstance(value, types) or (is_bool and bool not in types):
            example = str(defaults[key]).lower() if bool in types else defaults[key]
            raise InputError(f"{who}: {key}={value!r} is not {words} (its default is "
                             f"{defaults[key]!r}); e.g. --param {key}={example}.")
    return out


def check_loose_kinds(who: str, params: Mapping[str, Any]) -> None:
    """The set models' two loose parameters: ``max_epochs`` a number or None (``none``), and
    ``devices`` a whole number or ``auto`` (their ranges are in :data:`RANGES`)."""
    epochs, devices = params["max_epochs"], params["devices"]
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, numbers.Real)):
        raise InputError(f"{who}: max_epochs={epochs!r} is not a number or none; e.g. --param "
                         "max_epochs=150 (none: max_steps alone bounds the training).")
    if str(devices).lower() != "auto" and (isinstance(devices, bool)
                                           or not isinstance(devices, numbers.Integral)):
        raise InputError(f"{who}: devices={devices!r} is not a whole number or auto; e.g. "
                         "--param devices=2 (processes per node) or devices=auto (all GPUs).")
