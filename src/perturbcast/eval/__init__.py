"""Evaluation: cell-eval-identical metrics, differential expression, VCC score, reports."""

from .de import DEResult, differential_expression, mann_whitney_u
from .evaluate import (
    LOWER_BETTER,
    METRICS,
    VCC_METRICS,
    EvalResult,
    Reference,
    ReferenceCache,
    evaluate,
    vcc_score,
)

__all__ = [
    "LOWER_BETTER",
    "METRICS",
    "VCC_METRICS",
    "DEResult",
    "EvalResult",
    "Reference",
    "ReferenceCache",
    "differential_expression",
    "evaluate",
    "mann_whitney_u",
    "vcc_score",
]
