"""Parameter values of the right kind, checked when a model is made (before any work).

A parameter whose default is a bool, an int or a float takes a value of that kind (an int
where the default is a float); ``--param max_steps=abc`` is then one line naming the
parameter, not a traceback after minutes of fitting. Parameters whose default is text or
None, and a model's ``loose_params`` (e.g. ``shrink``: a number or ``auto``), are checked by
the model itself.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import InputError


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
