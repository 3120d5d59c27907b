"""Scoring per (perturbation, context): each context's predictions against its own real cells.

A perturbation's effect differs between cell lines or cell types, so pooling contexts would
compare a mixture of them. When both files carry a context column, each context is evaluated
on its own perturbed and control cells, and the summary is the mean over every
(perturbation, context) row. Real contexts without predictions (e.g. the held-out cell type
was the only one predicted) are left out with a warning; within a context, predictions and
real data must hold the same perturbations.
"""

from __future__ import annotations

import warnings
from functools import partial

import anndata as ad
import pandas as pd

from ..errors import InputError, preview
from .de import FdrMode
from .evaluate import EvalResult, Reference, ReferenceCache, result_table, score, summarise
from .scale import check_same_scale, normalization_of, target_sum_for

DEFAULT_CONTEXT_COLUMN = "context"


def context_column(pred: ad.AnnData, real: ad.AnnData, context_key: str | None) -> str | None:
    """The obs column to split contexts by, or None to pool them.

    An explicit ``context_key`` must be in both files. Otherwise the context key recorded in the
    predictions (``uns["perturbcast"]["context_key"]``, empty when the model had none) or, for
    files without that record, ``context`` is used when both files have that column.
    """
    if context_key is not None:
        for name, a in (("predictions", pred), ("real data", real)):
            if context_key not in a.obs:
                raise InputError(f"context column {context_key!r} not found in the {name}; "
                                 f"columns: {preview(a.obs.columns)}. Pass --context-key with "
                                 f"a column both files have, or omit it to pool contexts.")
        return context_key
    record = dict(pred.uns.get("perturbcast", {}) or {})
    if "context_key" in record:  # written by predict; '' when the model had no context key
        candidates = [str(record["context_key"])] if record["context_key"] else []
    else:
        candidates = [DEFAULT_CONTEXT_COLUMN]
    return next((c for c in candidates if c in pred.obs and c in real.obs), None)


def evaluate_by_context(pred: ad.AnnData, real: ad.AnnData, perturbation_key: str,
                        control: str, context_key: str, fdr: FdrMode = "per_perturbation",
                        epsilon: float = 0.0, edistance: bool = True,
                        references: ReferenceCache | None = None) -> EvalResult:
    """Evaluate each context of ``real`` separately (see the module docstring).

    ``references``: a :class:`ReferenceCache` that keeps each context's :class:`Reference` (its
    DE tables) for the next call with the same ``real``, e.g. a second model's predictions.

    Returns an EvalResult whose ``per_perturbation`` has one row per (perturbation, context)
    (a ``context`` column first), ``summary`` the mean over those rows and ``by_context`` the
    result of each context.
    """
    pred_norm = normalization_of(pred)
    target = target_sum_for(pred_norm, real)
    rctx = real.obs[context_key].astype(str).to_numpy()
    pctx = pred.obs[context_key].astype(str).to_numpy()
    extra = sorted(set(pctx) - set(rctx))
    if extra:
        raise InputError(f"predictions have context(s) {preview(extra, 5)} that the real "
                         f"data's {context_key!r} lacks; predict only the real contexts.")
    if not set(rctx) & set(pctx):
        raise InputError(f"no context of {context_key!r} is in both files (predictions: "
                         f"{preview(sorted(set(pctx)), 5)}; real: {preview(sorted(set(rctx)), 5)}"
                         f"); pass the real file of the predicted contexts.")
    unpredicted = sorted(set(rctx) - set(pctx))
    if unpredicted:
        warnings.warn(f"real context(s) {preview(unpredicted, 5)} of {context_key!r} have no "
                      f"predictions: scoring the {len(set(pctx))} predicted context(s) only "
                      f"(the summary is their mean).", stacklevel=3)
    tables, results, by_context = [], [], {}
    for ctx in sorted(set(rctx) & set(pctx)):
        try:
            key = (ctx, target, context_key, perturbation_key, control, fdr, epsilon)
            build = partial(Reference, real[rctx == ctx], perturbation_key, control, fdr,
                            epsilon, target)
            ref = build() if references is None else references.get(real, key, build)
            check_same_scale(pred_norm, ref.scale, ref.target_sum, ref.normalization)
            res, de_pred = score(pred[pctx == ctx], ref, edistance)
        except InputError as exc:
            raise InputError(f"context {ctx!r} ({context_key}): {exc}") from exc
        table = result_table(res, ref.perts)
        by_context[ctx] = EvalResult(table, summarise([res]), ref.de, de_pred)
        tables.append(table.reset_index().assign(context=ctx))
        results.append(res)
    table = pd.concat(tables, ignore_index=True)
    table = table.set_index("perturbation")[["context", *[c for c in table.columns
                                                          if c not in ("perturbation",
                                                                       "context")]]]
    return EvalResult(table, summarise(results), None, None, by_context)

