"""Train/test splits as data: lists of (perturbation, context) conditions, saved as JSON.

Control cells are always available for training and as the input of predictions.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..errors import InputError, preview
from ..utils import write_json
from .experiment import NO_CONTEXT, Experiment

SplitKind = Literal["unseen-perturbation", "unseen-context", "combo", "custom"]
SPLIT_KINDS = ("unseen-perturbation", "unseen-context", "combo")

Condition = tuple[str, str]


@dataclass
class Fold:
    """One train/test partition of the non-control (perturbation, context) conditions."""

    name: str
    train: list[Condition]
    test: list[Condition]

    def train_mask(self, exp: Experiment) -> np.ndarray:
        """Cells used for training: all controls plus the training conditions.

        Raises InputError when a condition of the fold is not in ``exp`` (see :meth:`check`).
        """
        self.check(exp)
        return exp.is_control | _condition_mask(exp, self.train)

    def test_mask(self, exp: Experiment) -> np.ndarray:
        """Cells of the held-out conditions (raises like :meth:`train_mask`)."""
        self.check(exp)
        return _condition_mask(exp, self.test)

    def check(self, exp: Experiment) -> None:
        """Fail with one line when the fold's (perturbation, context) conditions do not all
        exist in ``exp``, e.g. a split made with a context key applied without one."""
        have = set(map(tuple, exp.conditions()[["perturbation", "context"]].to_numpy()))
        missing = [c for c in [*self.train, *self.test] if tuple(c) not in have]
        if not missing:
            return
        ctx_key = exp.context_key or f"none (every cell is context {NO_CONTEXT!r})"
        names = [f"{p} ({c})" for p, c in missing]
        raise InputError(
            f"split fold {self.name!r}: {len(missing)} of its {len(self.train) + len(self.test)} "
            f"conditions are not in the data (perturbation key {exp.perturbation_key!r}, "
            f"context key {ctx_key}): {preview(names, 5)}; data has e.g. "
            f"{preview([f'{p} ({c})' for p, c in sorted(have)], 3)}. Make the split from this "
            f"file with the same --context-key and filters (perturbcast split).")

    def test_contexts(self) -> list[str]:
        return sorted({c for _, c in self.test})

    def to_dict(self) -> dict:
        return {"name": self.name, "train": [list(c) for c in self.train],
                "test": [list(c) for c in self.test]}


@dataclass
class Split:
    """A list of folds plus how they were made (kind, seed, parameters)."""

    kind: str
    seed: int
    folds: list[Fold]
    params: dict = field(default_factory=dict)

    def to_json(self, path: str | os.PathLike) -> None:
        write_json(path, {"kind": self.kind, "seed": self.seed, "params": self.params,
                          "folds": [f.to_dict() for f in self.folds]})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Split:
        try:
            d = json.loads(open(path).read())
            folds = [Fold(f["name"], [tuple(c) for c in f["train"]], [tuple(c) for c in f["test"]])
                     for f in d["folds"]]
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise InputError(f"could not read split file {path}: {exc}") from exc
        return cls(d["kind"], int(d.get("seed", 0)), folds, d.get("params", {}))


def _condition_mask(exp: Experiment, conds: list[Condition]) -> np.ndarray:
    if not conds:
        return np.zeros(exp.n_cells, bool)
    keys = np.char.add(np.char.add(exp.perturbations.astype(str), "\x1f"), exp.contexts.astype(str))
    wanted = np.asarray([f"{p}\x1f{c}" for p, c in conds])
    return np.isin(keys, wanted)


def make_split(
    exp: Experiment,
    kind: str = "unseen-perturbation",
    n_folds: int = 5,
    seed: int = 0,
    context: str | None = None,
    holdout_fraction: float = 0.5,
) -> Split:
    """Make a deterministic split of ``exp``'s conditions.

    Parameters
    ----------
    kind : 'unseen-perturbation'
        k-fold over perturbation labels: a test perturbation is unseen in every context.
    kind : 'unseen-context'
        few-shot: for each context (or only ``context``), ``holdout_fraction`` of its
        perturbations are held out; they stay in training in the other contexts.
    kind : 'combo'
        all singles (and controls) train; the combinations are split k-fold.
    n_folds : folds for 'unseen-perturbation' and 'combo' (capped by the number of labels)
    seed : shuffling seed; the same seed gives the same split
    """
    conds = [tuple(r) for r in exp.conditions()[["perturbation", "context"]].to_numpy()]
    rng = np.random.default_rng(seed)
    if kind not in SPLIT_KINDS:
        raise InputError(f"unknown split {kind!r}; choose one of {', '.join(SPLIT_KINDS)}.")
    ctrl_ctx = set(exp.contexts[exp.is_control])
    no_ctrl = sorted({c for _, c in conds} - ctrl_ctx)
    if no_ctrl:
        raise InputError(
            f"context(s) {', '.join(no_ctrl)} have no control cells, so nothing can be "
            f"predicted there; add controls or drop those contexts."
        )
    folds: list[Fold] = []
    params: dict = {"n_folds": n_folds}
    if kind == "unseen-perturbation":
        perts = np.array(exp.perturbation_names())
        folds = _kfold(conds, perts, n_folds, rng, key=lambda c: c[0])
    elif kind == "combo":
        combos = np.array([p for p in exp.perturbation_names() if len(exp.components(p)) > 1])
        if combos.size < 2:
            raise InputError(
                f"split 'combo' needs at least 2 combination labels joined by "
                f"{exp.separator!r}; found {combos.size}. Use --split unseen-perturbation."
            )
        folds = _kfold(conds, combos, n_folds, rng, key=lambda c: c[0])
    else:
        params = {"holdout_fraction": holdout_fraction, "context": context}
        contexts = [context] if context else exp.context_names()
        if context and context not in exp.context_names():
            raise InputError(f"context {context!r} not found; contexts: {exp.context_names()}")
        if len(exp.context_names()) < 2:
            raise InputError("split 'unseen-context' needs a --context-key with >= 2 contexts.")
        for ctx in contexts:
            perts = sorted(p for p, c in conds if c == ctx)
            n_test = max(1, int(round(holdout_fraction * len(perts))))
            test_p = set(rng.permutation(perts)[:n_test].tolist())
            test = [(p, c) for p, c in conds if c == ctx and p in test_p]
            train = [x for x in conds if x not in set(test)]
            folds.append(Fold(f"context={ctx}", train, test))
    return Split(kind, seed, folds, params)


def _kfold(conds, labels: np.ndarray, n_folds: int, rng, key) -> list[Fold]:
    if labels.size < 2:
        raise InputError("a split needs at least 2 perturbation labels to hold any out.")
    n_folds = max(2, min(n_folds, labels.size))
    order = rng.permutation(labels)
    folds = []
    for k in range(n_folds):
        test_labels = set(order[k::n_folds].tolist())
        test = [c for c in conds if key(c) in test_labels]
        train = [c for c in conds if key(c) not in test_labels]
        folds.append(Fold(f"fold{k}", train, test))
    return folds
