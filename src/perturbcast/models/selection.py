"""Which models a command runs, and which of the ``--param`` values each of them gets.

``--models`` takes names, or ``baselines`` / ``learned`` / ``all`` (default: all). ``--param``
takes ``KEY=VALUE`` (to every selected model that has KEY) or ``MODEL.KEY=VALUE`` (to that
model only; it wins over a bare KEY). A key no selected model has is an error, so a typo is
never silently ignored.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InputError
from . import BASELINES, MODELS, get_model_class

GROUPS = ("all", "baselines", "learned")


def learned_models() -> tuple[str, ...]:
    """The registered models that are not baselines (they are trained, so seeds matter)."""
    return tuple(m for m in MODELS if m not in BASELINES)


def select_models(spec: str | None) -> list[str]:
    """Model names from ``--models``: comma-separated names and/or groups (default: all).

    >>> select_models("baselines") == list(BASELINES)
    True
    """
    items = [m.strip() for m in (spec or "all").split(",") if m.strip()]
    names: list[str] = []
    for item in items:
        if item == "all":
            names += list(MODELS)
        elif item == "baselines":
            names += list(BASELINES)
        elif item == "learned":
            names += list(learned_models())
        else:
            get_model_class(item)
            names.append(item)
    if not names:
        raise InputError(f"--models {spec!r} names no model; e.g. --models baselines or "
                         f"--models additive,flow.")
    return list(dict.fromkeys(names))


def takes_param(name: str, key: str) -> bool:
    """Whether model ``name`` has parameter ``key`` (``embeddings`` also via
    ``takes_embeddings``)."""
    cls = get_model_class(name)
    if key == "embeddings" and getattr(cls, "takes_embeddings", False):
        return True
    return key in cls.param_names()


def parse_seeds(spec: str) -> list[int]:
    """``'0,1,2'`` -> ``[0, 1, 2]`` (``--seeds``)."""
    try:
        seeds = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--seeds {spec!r} is not a comma-separated list of integers; e.g. "
                         f"--seeds 0,1,2.") from None
    if not seeds:
        raise InputError("--seeds names no seed; e.g. --seeds 0,1,2.")
    return list(dict.fromkeys(seeds))


def parse_param_items(items: Sequence[str] | None) -> dict[str, Any]:
    """``['a=1', 'flow.b=x.csv']`` -> ``{'a': 1, 'flow.b': 'x.csv'}`` (values read as JSON when
    they parse, else kept as text)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InputError(f"--param {item!r} is not KEY=VALUE; e.g. --param max_steps=500 or "
                             f"--param flow.max_steps=500.")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def route_params(models: Sequence[str], params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Give each selected model the parameters meant for it.

    Parameters
    ----------
    models : the selected model names
    params : ``KEY`` or ``MODEL.KEY`` -> value (see :func:`parse_param_items`)

    Returns
    -------
    dict model -> {key: value}, for every selected model (empty dict when none apply).
    A ``MODEL.KEY`` overrides a bare ``KEY`` for that model.
    """
    routed: dict[str, dict[str, Any]] = {m: {} for m in models}
    qualified = {}
    for key, value in params.items():
        model, dot, sub = key.partition(".")
        if dot:
            get_model_class(model)  # an unknown model name is an error of its own
            qualified[(model, sub)] = value
            continue
        takers = [m for m in models if takes_param(m, key)]
        if not takers:
            raise InputError(f"--param {key}: no selected model takes {key!r} "
                             f"(models: {', '.join(models)}){_known(models, key)}.")
        for m in takers:
            routed[m][key] = value
    for (model, key), value in qualified.items():
        if model not in routed:
            raise InputError(f"--param {model}.{key}: {model!r} is not among the selected models "
                             f"({', '.join(models)}); add it to --models or drop the parameter.")
        if not takes_param(model, key):
            names = get_model_class(model).param_names()
            raise InputError(f"--param {model}.{key}: {model} has no parameter {key!r}; its "
                             f"parameters: {', '.join(names) or 'none'}.")
        routed[model][key] = value
    return routed


def _known(models: Sequence[str], key: str) -> str:
    """'; did you mean ...? their parameters: ...' for an error message."""
    names = sorted({n for m in models for n in get_model_class(m).param_names()})
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return hint + (f"{'' if close else '.'} Their parameters: {', '.join(names)}" if names else
                   "; they take no parameters")
