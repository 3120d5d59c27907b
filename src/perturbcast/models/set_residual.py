"""The base of a residual set model: a baseline's predicted mean change, chosen and cross-fitted.

With ``base=<baseline>`` a set model starts every control set at ``x0 + delta_base(p, c)``
(the baseline's predicted mean change, in the latent space) and learns the correction and the
cell-level distribution around it; with zero correction it predicts exactly the baseline.

Cross-fitting. The baseline fitted on all training cells is perfect on the training
conditions (their own delta is its answer for them), so a network trained on those bases
would learn to trust the base blindly. During training, each training condition's base delta
therefore comes from the baseline fitted on the *other* inner folds (out-of-fold, as in
stacking): the network sees the base as it will be for a test condition, one the baseline has
not seen. At prediction the baseline fitted on all training cells gives the base (so a held-out
training condition predicted again gets its in-sample base plus a correction learned against
its out-of-fold base: residual models are for conditions outside training).

Inner folds hold out what a test fold would: combinations only, by perturbation (``combo``:
their singles stay in, as in a combo split, where a test combo's singles are seen), whole
perturbations (``perturbation``: unseen in every context, as in unseen-perturbation splits) or
single conditions (``condition``: the perturbation stays in the other contexts, as in
cross-context splits). ``inner_unit=auto`` reads the shape of the training data: ``combo``
when at least two combinations have every component among the training singles (in
norman19_combo only 2 of the 8 training combinations do; an unseen single under ``combo``
gets the base's fallback and a correction learned on seen singles, about zero); else
``condition`` when some perturbation lacks a context that others have (or there are fewer
than two perturbations); else ``perturbation``. Conditions that are not
held out (the singles under ``combo``) get the in-sample base: at test time they are seen.
On the simulated combo screen, holding the singles out too made the network learn each
single's correction against a poor base and add it again on top of a combo's additive base
(mae 0.21-0.29 against the base's 0.16); on norman19_combo, base=additive scored 0.159 (flow)
and 0.143 (transition) with singles held out, 0.186 and 0.248 with ``combo`` (additive: 0.173).

``base=auto`` picks, among ``none`` and the baselines with a delta (``blend`` included: its
out-of-fold deltas are its members', each inner fold blended with weights fitted on the other
folds, see :mod:`~perturbcast.models.blend_baseline`), the one whose out-of-fold
deltas have the smallest squared error against the training conditions' real deltas
(``base_rule=error``; ``parity_score`` first keeps the candidates tied with the best on error
and correlation, then takes the best VCC-like score, see :mod:`~perturbcast.models.base_rule`),
averaged over :data:`BASE_REPEATS` random assignments of the conditions to inner folds (the
bases are fitted on condition means, so repeats cost little; with ~20 training perturbations one
assignment's choice changed with the seed: on papalexi21_unseen four different bases over
the 15 fits of 5 folds x 3 seeds). The network trains on the first assignment's out-of-fold
deltas. Only training cells are read: the test fold never enters the choice.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.experiment import Experiment
from ..errors import InputError
from .base_rule import STATS, InnerBaseTable, rule_choice, vcc_like
from .blend_baseline import MEMBERS as BLEND_MEMBERS
from .blend_baseline import cross_fitted_blend, nnls_weights, normal_equations

Condition = tuple[str, str]
BASE_REPEATS = 5


def base_names() -> list[str]:
    """Baselines that predict a mean change (``delta``) and can serve as a base."""
    from . import BASELINES, get_model_class
    from .baselines import MeanShiftModel

    return [n for n in BASELINES if n != "control" and issubclass(
        get_model_class(n), MeanShiftModel) and get_model_class(n).delta is not
        MeanShiftModel.delta]


def check_base(spec: str) -> None:
    allowed = ["auto", "none", *base_names()]
    if spec not in allowed:
        raise InputError(f"base={spec!r} is not one of {', '.join(allowed)}; use a baseline "
                         "with a predicted mean change, none, or auto.")


INNER_UNITS = ("auto", "combo", "perturbation", "condition")


def check_inner(unit: str, n_folds: int, who: str) -> None:
    """Raise InputError for an ``inner_unit`` or ``inner_folds`` that cannot hold out."""
    if unit not in INNER_UNITS:
        raise InputError(f"{who}: inner_unit={unit!r} is not one of {', '.join(INNER_UNITS)}.")
    if int(n_folds) < 2:
        raise InputError(f"{who}: inner_folds={n_folds!r} must be at least 2 (with one fold "
                         "a held-out condition is scored by what was fitted on it); use "
                         "inner_folds=5.")


def inner_unit(cond_keys: list[Condition], spec: str, split_label) -> str:
    """``combo``, ``perturbation`` or ``condition`` (see the module docstring) for
    ``inner_unit=spec``; ``split_label(label)`` gives a label's components."""
    if spec != "auto":
        return spec
    perts = sorted({p for p, _ in cond_keys})
    combos = [p for p in perts if len(split_label(p)) > 1]
    singles = set(perts) - set(combos)
    if sum(set(split_label(c)) <= singles for c in combos) >= 2:
        return "combo"
    ctxs = {c for _, c in cond_keys}
    complete = len(cond_keys) == len(perts) * len(ctxs)
    return "perturbation" if complete and len(perts) >= 2 else "condition"


def inner_folds(cond_keys: list[Condition], unit: str, n_folds: int, seed: int,
                split_label) -> np.ndarray:
    """Inner fold id per training condition, shape (n_conditions,); -1 for conditions not
    held out (singles under ``combo``; everything when there is a single unit)."""
    labels = [k[0] if unit != "condition" else f"{k[0]}|{k[1]}" for k in cond_keys]
    held = [unit != "combo" or len(split_label(k[0])) > 1 for k in cond_keys]
    units = sorted({lab for lab, h in zip(labels, held, strict=True) if h})
    if len(units) < 2:
        return np.full(len(cond_keys), -1)
    order = np.random.default_rng(seed).permutation(len(units))
    k = min(n_folds, len(units))
    fold_of = {units[j]: i % k for i, j in enumerate(order)}
    return np.array([fold_of[lab] if h else -1 for lab, h in zip(labels, held, strict=True)])


def inner_assignments(cond_keys: list[Condition], unit_spec: str, n_folds: int, seed: int,
                      split_label, repeats: int = BASE_REPEATS
                      ) -> tuple[str, list[np.ndarray]]:
    """The inner unit and ``repeats`` random assignments of the conditions to inner folds
    (seeds ``seed + 7919 r``; the first is the one a network trains on)."""
    unit = inner_unit(cond_keys, unit_spec, split_label)
    return unit, [inner_folds(cond_keys, unit, n_folds, seed + 7919 * r, split_label)
                  for r in range(repeats)]


def real_deltas(exp: Experiment, mask: np.ndarray, cond_keys: list[Condition]) -> np.ndarray:
    """Each training condition's mean minus its context's control mean, (n_conditions, n_genes)."""
    keys, means = exp.group_means(("perturbation", "context"), mask)
    row = {(str(p), str(c)): i for i, (p, c) in enumerate(zip(keys.perturbation, keys.context,
                                                               strict=True))}
    ctrl = {c: means[i] for (p, c), i in row.items() if p == exp.control}
    glob = np.mean(list(ctrl.values()), 0)
    return np.stack([means[row[k]] - ctrl.get(k[1], glob) for k in cond_keys])


class _MeansOnly:
    """An Experiment whose ``group_means`` over (perturbation, context) answers from means
    computed once: the inner folds drop whole conditions, so a condition's mean never
    changes, and the folds' base fits need not read the cells again."""

    def __init__(self, exp: Experiment, mask: np.ndarray) -> None:
        self._exp = exp
        self._keys, self._means = exp.group_means(("perturbation", "context"), mask)
        self._labels = np.char.add(np.char.add(exp.perturbations.astype(str), "|"),
                                   exp.contexts.astype(str))
        self._key_labels = (self._keys.perturbation.astype(str) + "|" +
                            self._keys.context.astype(str)).to_numpy()

    def __getattr__(self, name: str):
        return getattr(self._exp, name)

    def group_means(self, by=("perturbation", "context"), mask=None):
        if tuple(by) != ("perturbation", "context"):
            return self._exp.group_means(by, mask)
        sel = np.isin(self._key_labels, np.unique(self._labels[np.asarray(mask, bool)]))
        return self._keys[sel].reset_index(drop=True), self._means[sel]


def fit_base(name: str, exp: Experiment, mask: np.ndarray, seed: int):
    from . import get_model

    return get_model(name, seed=seed).fit(exp, mask)


def out_of_fold_deltas(name: str, exp: Experiment, mask: np.ndarray,
                       cond_keys: list[Condition], folds: np.ndarray, seed: int,
                       make=None) -> np.ndarray:
    """Base delta of each training condition from the base fitted without its inner fold,
    shape (n_conditions, n_genes); conditions that cannot be held out get the full fit's.
    ``make(name)``: an unfitted model (default: the baseline with default parameters)."""
    out = np.zeros((len(cond_keys), exp.n_genes))
    cond_of_cell = {k: i for i, k in enumerate(cond_keys)}
    cell_cond = np.array([cond_of_cell.get((str(p), str(c)), -1) for p, c in
                          zip(exp.perturbations, exp.contexts, strict=True)])
    for f in np.unique(folds):
        held = np.flatnonzero(folds == f)
        keep = mask if f < 0 else mask & ~np.isin(cell_cond, held)
        model = fit_base(name, exp, keep, seed) if make is None else make(name).fit(exp, keep)
        for i in held:
            out[i] = model.delta(*cond_keys[i])
    return out


def choose_base(spec: str, exp: Experiment, mask: np.ndarray, cond_keys: list[Condition],
                unit_spec: str, n_folds: int, seed: int, rule: str = "error"
                ) -> tuple[str, np.ndarray, dict[str, Any]]:
    """Resolve ``base=spec`` on the training cells.

    Returns the base name (``"none"`` for no base), the out-of-fold base deltas of the training
    conditions (n_conditions, n_genes; zeros for none) and a summary for ``training_summary``
    (choice, inner unit and folds, each candidate's squared error on the held-out conditions;
    ``rule``: see :mod:`~perturbcast.models.base_rule`;
    with ``blend`` a candidate, its weights pooled over the assignments, ``blend_member_weights``,
    which :func:`fit_chosen_base` uses).
    """
    check_inner(unit_spec, n_folds, f"base={spec}")
    unit, assignments = inner_assignments(cond_keys, unit_spec, n_folds, seed, exp.components)
    folds = assignments[0]
    summary: dict[str, Any] = {"base_requested": spec, "inner_unit": unit,
                               "inner_folds": int(folds.max()) + 1}
    zeros = np.zeros((len(cond_keys), exp.n_genes))
    if spec == "none":
        return "none", zeros, {**summary, "base": "none"}
    held_out = (folds >= 0).any()
    if not held_out:
        if spec == "auto":
            warnings.warn("base=auto: a single training condition cannot be held out to choose "
                          "a base; using base=none.", stacklevel=3)
            return "none", zeros, {**summary, "base": "none", "base_rule": rule}
        warnings.warn(f"base={spec}: a single training condition cannot be held out, so its "
                      "base delta is the in-sample one.", stacklevel=3)
    candidates = base_names() if spec == "auto" else [spec]
    if spec not in ("auto", "blend") or not held_out:
        assignments = assignments[:1]
    needed = ("sq_error",) if rule == "error" or spec != "auto" else STATS
    inner = inner_base_table(exp, mask, cond_keys, candidates, assignments, seed, held_out,
                             needed)
    chosen = rule_choice(inner.table, rule) if spec == "auto" else spec
    summary.update(base=chosen, inner_repeats=len(assignments),
                   inner_error={k: round(v, 6) for k, v in inner.table.mean("sq_error").items()})
    if spec == "auto":
        summary["base_rule"] = rule
    if rule != "error" and spec == "auto":
        summary["inner_score"] = {k: round(v, 4) for k, v in vcc_like(inner.table).items()}
    if inner.gram is not None:
        weights = nnls_weights(inner.gram, inner.rhs)
        summary["blend_member_weights"] = {m: float(w) for m, w in zip(BLEND_MEMBERS, weights,
                                                                       strict=True)}
    return chosen, inner.first.get(chosen, zeros), summary


@dataclass
class InnerBases:
    """What :func:`inner_base_table` computed: the statistics per candidate and held-out
    condition, the first assignment's out-of-fold deltas per candidate (the network trains on
    them), and blend's pooled normal equations (None without blend)."""

    table: InnerBaseTable
    first: dict[str, np.ndarray]
    gram: np.ndarray | None = None
    rhs: np.ndarray | None = None


def inner_base_table(exp: Experiment, mask: np.ndarray, cond_keys: list[Condition],
                     candidates: list[str], assignments: list[np.ndarray], seed: int,
                     held_out: bool = True, needed: tuple[str, ...] = STATS) -> InnerBases:
    """Score ``none`` and every candidate base on the held-out training conditions of each
    inner-fold assignment (:func:`inner_assignments`); only training cells are read.
    ``needed``: the statistics to compute (:data:`~perturbcast.models.base_rule.STATS`)."""
    blend = "blend" in candidates and held_out  # blended from its members' deltas
    fitted = [n for n in candidates if n != "blend" or not blend]
    fitted += [m for m in BLEND_MEMBERS if blend and m not in fitted]
    exp = _MeansOnly(exp, mask)
    real = real_deltas(exp, mask, cond_keys)
    scored = assignments[0] >= 0 if held_out else np.ones(len(cond_keys), bool)
    contexts = np.array([c for _, c in cond_keys])[scored]
    out = InnerBases(InnerBaseTable(needed), {})
    for r, fold_ids in enumerate(assignments):
        deltas = {"none": np.zeros_like(real)}
        deltas.update({name: out_of_fold_deltas(name, exp, mask, cond_keys, fold_ids, seed)
                       for name in fitted})
        if blend:
            members = np.stack([deltas[m] for m in BLEND_MEMBERS])
            deltas["blend"] = cross_fitted_blend(members, real, fold_ids)
            g, b = normal_equations(members[:, fold_ids >= 0], real[fold_ids >= 0])
            out.gram, out.rhs = (g, b) if out.gram is None else (out.gram + g, out.rhs + b)
        if r == 0:
            out.first = deltas
        for name in ("none", *candidates):
            out.table.add(name, deltas[name][scored], real[scored], contexts)
    return out


def fit_chosen_base(name: str, exp: Experiment, mask: np.ndarray, seed: int,
                    summary: dict[str, Any], n_folds: int):
    """The chosen base fitted on every training cell (None for ``none``); a blend takes the
    weights :func:`choose_base` pooled (those :meth:`BlendBaseline.fit` would learn on the
    same unit and folds) instead of learning them again."""
    if name == "none":
        return None
    weights = summary.get("blend_member_weights")
    if name != "blend" or weights is None:
        return fit_base(name, exp, mask, seed)
    from .blend_baseline import BlendBaseline

    blend = BlendBaseline(seed=seed, inner_unit=summary["inner_unit"], inner_folds=n_folds)
    blend = blend.fit_with_weights(exp, mask, np.array([weights[m] for m in BLEND_MEMBERS]))
    summary["blend_weights"] = blend.describe_weights()
    return blend
