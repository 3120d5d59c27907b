"""Data layer: read + validate AnnData, preprocessing, perturbation labels, splits, stores."""

from .experiment import NO_CONTEXT, Experiment
from .experiment_reader import read_experiment
from .labels import components, is_combo, map_targets
from .reading import select_genes
from .splits import Fold, Split, make_split
from .store_experiment import read_store

__all__ = [
    "NO_CONTEXT",
    "Experiment",
    "Fold",
    "Split",
    "components",
    "is_combo",
    "make_split",
    "map_targets",
    "read_experiment",
    "read_store",
    "select_genes",
]
