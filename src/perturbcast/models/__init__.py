"""User-facing models (fit / predict / save / load on an Experiment), baselines included."""

from __future__ import annotations

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
        raise InputError(f"unknown model {name!r}; available: {', '.join(MODELS)}.")
    return MODELS[name]


def get_model(name: str, **params) -> PerturbationModel:
    """Instantiate a model by name (e.g. ``get_model('linear', ridge=0.1)``)."""
    return get_model_class(name)(**params)


__all__ = ["BASELINES", "MODELS", "PerturbationModel", "get_model", "get_model_class"]
