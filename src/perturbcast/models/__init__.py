"""User-facing models (fit / predict / save / load on an Experiment), baselines included."""

from __future__ import annotations

import difflib

from ..errors import InputError
from .base import PerturbationModel
from .baselines import (
    AdditiveBaseline,
    CellMeanBaseline,
    ContextMeanBaseline,
    ControlBaseline,
    PerturbationMeanBaseline,
)
from .blend_baseline import BlendBaseline
from .gene_baselines import KnnBaseline, LinearBaseline
from .incontext import InContextModel
from .param_types import check_param_ranges, check_param_types
from .set_flow import FlowModel, TransitionModel

MODELS: dict[str, type[PerturbationModel]] = {
    m.name: m
    for m in (ControlBaseline, CellMeanBaseline, ContextMeanBaseline, PerturbationMeanBaseline,
              AdditiveBaseline, LinearBaseline, KnnBaseline, BlendBaseline)
}
BASELINES = tuple(MODELS)
MODELS.update({m.name: m for m in (FlowModel, TransitionModel, InContextModel)})


def get_model_class(name: str) -> type[PerturbationModel]:
    if name not in MODELS:
        close = difflib.get_close_matches(str(name), list(MODELS), n=1)
        hint = f" did you mean {close[0]!r}?" if close else ""
        raise InputError(f"unknown model {name!r};{hint} available: {', '.join(MODELS)}.")
    return MODELS[name]


def get_model(name: str, **params) -> PerturbationModel:
    """Instantiate a model by name (e.g. ``get_model('linear', ridge=0.1)``); a parameter
    value of the wrong kind (``max_steps='abc'``) is a one-line error before any work."""
    seed = {"seed": params.pop("seed")} if "seed" in params else {}
    return get_model_class(name)(**seed, **check_params(name, params))


def check_params(name: str, params: dict) -> dict:
    """``params`` for model ``name`` with each value's kind checked against its default's, and
    each number's range (see :mod:`~perturbcast.models.param_types`); call it before reading
    data to fail early."""
    cls = get_model_class(name)
    checked = cls.check_loose(check_param_types(name, params, cls.param_defaults(),
                                                cls.loose_params))
    check_param_ranges(name, checked, cls.param_defaults())
    return checked


__all__ = ["BASELINES", "MODELS", "PerturbationModel", "check_params", "get_model",
           "get_model_class"]
