"""Perturbation atlas (a perturbation x context grid streamed to one .h5ad) and in-silico screen.

Works with every :class:`~perturbcast.models.base.PerturbationModel`.
"""

from __future__ import annotations

from .grid import AtlasResult, parse_names, predict_atlas, print_ranked, rank
from .h5ad_stream import StreamingH5ad
from .screen import PopulationScorer, SignatureScorer, read_target

__all__ = ["AtlasResult", "PopulationScorer", "SignatureScorer", "StreamingH5ad", "parse_names",
           "predict_atlas", "print_ranked", "rank", "read_target"]
