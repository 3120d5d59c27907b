"""How much of a set model's learned correction to keep: chosen on held-out training conditions.

A residual set model predicts a condition's mean change as ``base + correction`` (the base is
a baseline's predicted mean change, or zero with ``base=none``). When the network's correction
does not generalise to conditions it has not seen, the honest prediction is the base alone.
``shrink=s`` keeps ``s`` of the correction: every predicted cell moves by ``-(1 - s)`` times the
set's mean correction, so the cells keep the network's spread around a mean of
``base + s * correction`` (``s=0``: the mean change is exactly the base's).

``shrink=auto`` chooses ``s`` from :data:`GRID` without reading the test fold: a probe model
(same class and parameters, one member, the chosen base) is trained on the training
conditions minus an inner fold (:func:`~perturbcast.models.set_residual.inner_folds`, the
unit a test fold would hold out), predicts the held-out conditions from their own training
controls, and ``s`` minimises the squared error of the predicted mean change against their
real one, pooled over the probes (ties go to the smaller ``s``). ``shrink=auto_1se`` takes
the smallest ``s`` whose error is within one standard error (over the held-out conditions)
of the best one's: the one-standard-error rule, which prefers the base when the probes cannot
tell the shares apart. With ``shrink_probes="auto"`` (default) probes hold out inner folds
0, 1, ... until :data:`MIN_HELD_OUT` conditions have been scored or :data:`MAX_PROBES` probes
have run: one fold of ~4 perturbations (papalexi21_unseen) or one combination
(norman19_combo) gave a different share with every seed. ``shrink_probes=k`` runs exactly
``k`` probes, or one per inner fold where there are fewer (``"all"``: every inner fold, so
every training condition an inner fold holds out is scored once; with ``inner_unit=combo``
the singles are never held out). Each probe's base is fitted without its held-out
fold too, so it is the base as a test condition would see it. The final model is then
trained on all training conditions. Cost: one to :data:`MAX_PROBES` extra trainings (with
``shrink_probes=all``, one per inner fold) on ~(k-1)/k of the data.
The scored means are floored at 0 as predictions' are; a held-out condition the probe cannot
predict (no feature row for its perturbation, no training controls in its context) is left
out of the score, and with none left ``shrink`` stays 1 (announced).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..data.experiment import Experiment
from ..data.splits import _condition_mask
from ..errors import InputError
from ..train.resume import sub_resume
from .set_residual import Condition, inner_folds, inner_unit, real_deltas

GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
PROBE_CELLS = 256
MIN_HELD_OUT = 8
MAX_PROBES = 3


AUTO = ("auto", "auto_1se")


def check_probes(value: Any, who: str) -> int | str:
    """``"auto"``, ``"all"`` or a positive int (strings from ``--param`` are parsed)."""
    text = str(value).strip().lower()
    if text in ("auto", "all"):
        return text
    k = int(text) if text.isdigit() and not isinstance(value, bool) else 0
    if k < 1 or str(k) != text:
        raise InputError(f"{who}: shrink_probes={value!r} is not auto, all or a whole number "
                         "of probes >= 1; use e.g. shrink_probes=auto or shrink_probes=all.")
    return k


def _n_probes(spec: int | str, n_folds: int) -> tuple[int, int]:
    """(most probes to run, held-out conditions after which to stop) for ``shrink_probes``."""
    if spec == "auto":
        return min(MAX_PROBES, n_folds), MIN_HELD_OUT
    return (n_folds if spec == "all" else min(int(spec), n_folds)), np.iinfo(np.int64).max


def check_shrink(value: Any) -> float | str:
    """``"auto"``, ``"auto_1se"`` or a float in [0, 1] (strings from ``--param`` are
    parsed)."""
    if str(value).lower() in AUTO:
        return str(value).lower()
    try:
        s = float(value)
    except (TypeError, ValueError):
        s = -1.0
    if not 0.0 <= s <= 1.0:
        raise InputError(f"shrink={value!r} is not a number in [0, 1], auto or auto_1se; use "
                         "e.g. shrink=1 (keep the learned correction) or shrink=auto.")
    return s


def shrink_change(change: np.ndarray, s: float) -> np.ndarray:
    """Keep ``s`` of the mean of ``change`` (n_cells, d) and all of its spread."""
    return change if s == 1.0 else change - (1.0 - s) * change.mean(0, keepdims=True)


def choose_shrink(model, exp: Experiment, mask: np.ndarray,
                  cond_keys: list[Condition]) -> tuple[float, dict[str, Any]]:
    """Choose ``shrink`` for ``model`` (being fitted on ``mask``, base already chosen).

    Returns the chosen value and a summary for ``training_summary`` (the number of probes and
    of held-out conditions scored, each grid value's mean squared error of the predicted mean
    change and, with two or more conditions, its standard error over them).
    """
    p = model.params
    unit = inner_unit(cond_keys, p["inner_unit"], exp.components)
    folds = inner_folds(cond_keys, unit, p["inner_folds"], model.seed, exp.components)
    if folds.max() < 1:
        warnings.warn(f"{model.name}: shrink=auto needs two inner folds of training conditions "
                      f"(unit {unit!r}); keeping the whole correction (shrink=1).", stacklevel=4)
        return 1.0, {"shrink": 1.0, "shrink_held_out": 0, "shrink_n_probes": 0}
    scored: list[tuple] = []  # (held-out condition, its probe prediction)
    reasons: list[str] = []
    n_probes = 0
    max_probes, enough = _n_probes(p["shrink_probes"], int(folds.max()) + 1)
    for fold in range(max_probes):
        if len(scored) >= enough:
            break
        held = [k for k, f in zip(cond_keys, folds, strict=True) if f == fold]
        preds = _probe(model, exp, mask, held, fold)
        n_probes += 1
        scored += [(k, r) for k, r in zip(held, preds, strict=True) if not isinstance(r, str)]
        reasons += [r for r in preds if isinstance(r, str)]
    if not scored:
        warnings.warn(f"{model.name}: shrink=auto could not predict any held-out condition "
                      f"({reasons[0]}); keeping the whole correction (shrink=1).", stacklevel=4)
        return 1.0, {"shrink": 1.0, "shrink_held_out": 0, "shrink_n_probes": n_probes}
    real = real_deltas(exp, mask, [k for k, _ in scored])
    per_condition = np.array([[((_mean_change(*pred, s) - r) ** 2).sum() for s in GRID]
                              for (_, pred), r in zip(scored, real, strict=True)])
    errors = dict(zip(GRID, per_condition.mean(0).tolist(), strict=True))
    # how far apart the shares are, in noise: the standard error over held-out conditions
    se = (dict(zip(GRID, (per_condition.std(0, ddof=1) / np.sqrt(len(scored))).tolist(),
                   strict=True)) if len(scored) > 1 else None)
    chosen = min(GRID, key=lambda s: (round(errors[s], 12), s))
    if p["shrink"] == "auto_1se" and se is not None:  # the smallest share within one SE
        chosen = min(s for s in GRID if errors[s] <= errors[chosen] + se[chosen])
    summary = {"shrink": chosen, "shrink_held_out": len(scored), "shrink_n_probes": n_probes,
               "shrink_error": {str(s): round(e, 6) for s, e in errors.items()}}
    if se is not None:
        summary["shrink_error_se"] = {str(s): round(e, 6) for s, e in se.items()}
    return chosen, summary


def _probe(model, exp: Experiment, mask: np.ndarray, held: list[Condition], fold: int) -> list:
    """Train a one-member copy of ``model`` (its chosen base, shrink 1) without the ``held``
    conditions (inner fold ``fold``) and predict them (see :func:`_probe_predictions`)."""
    fit_mask = mask & ~_condition_mask(exp, held)
    one = {k: v for k, v in {"n_seeds": 1, "checkpoint_dir": None}.items() if k in model.params}
    probe = type(model)(seed=model.seed, **{**model.params, "base": model.base_name,
                                            "shrink": 1.0, **one})
    with warnings.catch_warnings(), sub_resume(f"probe{fold}"):  # its own checkpoints
        warnings.simplefilter("ignore")  # the probe's notices (e.g. a held-out context
        probe.fit(exp, fit_mask)  # predicted as 'unknown') are not the user's
        return _probe_predictions(probe, exp, fit_mask, held)


def _mean_change(x_ctrl: np.ndarray, base: np.ndarray, change: np.ndarray,
                 s: float) -> np.ndarray:
    """Predicted mean change, shape (n_genes,), of cells ``x_ctrl + base + change`` (each
    (n_cells, n_genes) or broadcast) keeping the share ``s`` of the correction, made
    non-negative as :meth:`~perturbcast.models.base.PerturbationModel.predict` does
    (:func:`~perturbcast.models.prediction_rules.clip_keep_mean`: the mean, floored at 0)."""
    cells = x_ctrl + base + shrink_change(change, s)
    return np.maximum(cells.mean(0), 0.0) - x_ctrl.mean(0)


def _probe_predictions(probe, exp: Experiment, fit_mask: np.ndarray, held: list[Condition]
                       ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray] | str]:
    """For each held-out condition, from up to :data:`PROBE_CELLS` training controls of its
    context: (control cells (n, n_genes), the probe's base delta (n_genes,), each cell's
    learned correction (n, n_genes)), or why it cannot be predicted."""
    gene_idx = probe._gene_index(exp)
    rng = np.random.default_rng(probe.seed)
    out: list = []
    for pert, ctx in held:
        pool = np.flatnonzero(fit_mask & exp.is_control & (exp.contexts == ctx))
        if pool.size == 0:
            out.append(f"no training control cells in context {ctx!r}")
            continue
        pick = np.sort(rng.choice(pool, min(PROBE_CELLS, pool.size), replace=False))
        x_ctrl = exp.rows(pick)[:, gene_idx]
        try:
            pred = probe._predict_cells(x_ctrl, pert, ctx, exp, pool, ctrl_idx=pick)
        except InputError as exc:  # e.g. no feature row for a held-out perturbation
            out.append(str(exc))
            continue
        base = probe._base_delta(pert, ctx, x_ctrl.shape[1])
        out.append((x_ctrl, base, pred - x_ctrl - base))
    return out
