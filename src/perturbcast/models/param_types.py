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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import numpy as np

from ..errors import InputError

#: (low, high, low_open, high_open) per parameter name, shared by every model that has it;
#: None: unbounded on that side. Unlisted numeric parameters: at least 0 (``lr=0`` freezes a
#: network; ``k`` and ``inner_folds`` are checked further by their models, with their own
#: messages; ``devices`` by :func:`check_loose_kinds`).
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    **dict.fromkeys(("depth", "dim", "n_heads", "n_sets", "set_size", "steps", "n_latent",
                     "n_components", "n_modules", "n_prompt", "bank_cells", "bank_controls",
                     "val_every", "num_nodes", "n_seeds"),
                    (1, None, False, False)),
    **dict.fromkeys(("context_dropout", "learned_dropout", "val_fraction"), (0, 1, False, True)),
    **dict.fromkeys(("mask_min", "mask_max", "shrink"), (0, 1, False, False)),
}

_LOADING = ContextVar("perturbcast_loading_saved", default=False)


@contextmanager
def saved_params() -> Iterator[None]:
    """Within it, models are made from a saved config: ranges are not checked (they govern
    fitting, and a model saved before a range was added must still load and predict)."""
    token = _LOADING.set(True)
    try:
        yield
    finally:
        _LOADING.reset(token)


def loading_saved() -> bool:
    """True inside :func:`saved_params`."""
    return _LOADING.get()


def _as_float(value: numbers.Real) -> float:
    """``float(value)``; inf for an integer too large for a float (10**400)."""
    try:
        return float(value)
    except OverflowError:
        return float("inf")


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
        if (isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real)
                or key == "devices"):
            continue
        low, high, low_open, high_open = RANGES.get(key, (0, None, False, False))
        v = _as_float(value)
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
                and _as_float(value).is_integer()):
            out[key] = int(value)
            continue
        if not isinstance(value, types) or (is_bool and bool not in types):
            example = str(defaults[key]).lower() if bool in types else defaults[key]
            raise InputError(f"{who}: {key}={value!r} is not {words} (its default is "
                             f"{defaults[key]!r}); e.g. --param {key}={example}.")
    return out


def check_loose_kinds(who: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The set models' two loose parameters, checked before any work: ``max_epochs`` a number
    or None (``none``/``null`` from ``--param`` become None; its range is in :data:`RANGES`),
    and ``devices`` what Lightning takes: ``auto``, a whole number (-1: all), a list of device
    indices or their comma-separated text (``0,1``). Returns ``params`` with ``max_epochs``
    normalised."""
    out = dict(params)
    epochs = out.get("max_epochs")
    if "max_epochs" in out and str(epochs).lower() in ("none", "null"):
        out["max_epochs"] = epochs = None
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, numbers.Real)):
        raise InputError(f"{who}: max_epochs={epochs!r} is not a number or none; e.g. --param "
                         "max_epochs=150 (none: max_steps alone bounds the training).")
    if "devices" in out and not _is_devices(out["devices"]):
        raise InputError(f"{who}: devices={out['devices']!r} is not auto, a whole number of "
                         "processes per node (-1: all) or device indices like 0,1; e.g. "
                         "--devices 2.")
    return out


def _is_devices(value: Any) -> bool:
    def whole(v: Any) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    if whole(value):
        return value >= 1 or value == -1
    if isinstance(value, list | tuple):
        return bool(value) and all(whole(v) and v >= 0 for v in value)
    text = str(value).strip().lower()
    return text == "auto" or (bool(text) and all(part.strip().isdigit()
                                                  for part in text.rstrip(",").split(",")))
