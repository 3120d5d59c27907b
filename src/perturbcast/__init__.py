"""perturbcast: predict how single cells respond to perturbations; evaluate like cell-eval, fast."""

from .data import Experiment, Split, make_split, read_experiment, read_store
from .data.convert import convert
from .datasets import simulate
from .errors import InputError
from .eval import evaluate, vcc_score
from .models import get_model
from .models.base import PerturbationModel

load_model = PerturbationModel.load
"""Load a model saved by ``model.save(path)`` or ``perturbcast train --out path`` (its class,
config, gene list, vocabulary and normalisation are read from the folder)."""

__version__ = "0.1.0"

__all__ = [
    "Experiment",
    "InputError",
    "convert",
    "Split",
    "evaluate",
    "get_model",
    "load_model",
    "make_split",
    "read_experiment",
    "read_store",
    "simulate",
    "vcc_score",
]
