"""A learned model's base and the share of its own correction it keeps (``base`` / ``shrink``).

Shared by the set models and the in-context model. ``base`` names a baseline whose predicted
mean change the model's prediction is measured against (chosen on inner folds with ``auto``,
see :mod:`~perturbcast.models.set_residual`); ``shrink`` keeps that share of the model's
correction, the difference between its predicted mean change and the base's (chosen on
held-out training conditions with ``auto``, see :mod:`~perturbcast.models.set_shrink`). The
set models also start their sets at the base (the network learns the correction); the
in-context model's network never sees the base, so there it matters only through ``shrink``:
``shrink=0`` gives the base's mean change with the network's cells around it, and ``shrink=1``
(the default) is the network's prediction, whatever the base.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..data.experiment import Experiment
from .base_rule import check_rule
from .set_residual import Condition, check_base, check_inner, choose_base, fit_chosen_base
from .set_shrink import AUTO, check_probes, check_shrink, choose_shrink, shrink_change


class BaseFallback:
    """Mixin for a :class:`~perturbcast.models.base.PerturbationModel` whose ``params`` hold
    ``base``, ``base_rule``, ``shrink``, ``shrink_probes``, ``inner_unit`` and
    ``inner_folds``."""

    base_name: str = "none"
    base_model: Any = None
    shrink: float = 1.0

    def _init_fallback(self) -> None:
        """Check ``base`` and ``shrink`` (call from ``__init__``, after ``params`` are set)."""
        check_base(self.params["base"])
        check_rule(self.params.setdefault("base_rule", "error"), self.name)
        check_inner(self.params["inner_unit"], self.params["inner_folds"], self.name)
        self.params["shrink"] = check_shrink(self.params["shrink"])
        self.params["shrink_probes"] = check_probes(self.params.setdefault("shrink_probes",
                                                                           "auto"), self.name)
        self.shrink = 1.0 if self.params["shrink"] in AUTO else self.params["shrink"]
        self.base_name, self.base_model = "none", None

    def _fit_base(self, exp: Experiment, mask: np.ndarray,
                  cond_keys: list[Condition]) -> tuple[np.ndarray, dict[str, Any]]:
        """Resolve ``base`` on the training cells and fit it on all of them.

        Returns the training conditions' out-of-fold base deltas (n_conditions, n_genes) and
        the summary for ``training_summary``."""
        p = self.params
        self.base_name, oof, summary = choose_base(p["base"], exp, mask, cond_keys,
                                                   p["inner_unit"], p["inner_folds"], self.seed,
                                                   p["base_rule"])
        self.base_model = fit_chosen_base(self.base_name, exp, mask, self.seed, summary,
                                          p["inner_folds"])
        return oof, summary

    def _fit_shrink(self, exp: Experiment, mask: np.ndarray,
                    cond_keys: list[Condition]) -> dict[str, Any]:
        """Resolve ``shrink`` (after the model is trained); returns its summary."""
        if self.params["shrink"] not in AUTO:
            return {"shrink": self.shrink}
        self.shrink, summary = choose_shrink(self, exp, mask, cond_keys)
        return summary

    def _base_delta(self, perturbation: str, context: str, n_genes: int) -> np.ndarray:
        """The base's predicted mean change, shape (n_genes,) (zeros without a base)."""
        if self.base_model is None:
            return np.zeros(n_genes, np.float32)
        return self.base_model.delta(perturbation, context).astype(np.float32)

    def _keep_share(self, pred: np.ndarray, x_ctrl: np.ndarray, perturbation: str,
                    context: str) -> np.ndarray:
        """Cells ``pred`` (n, G) from controls ``x_ctrl`` (n, G) keeping ``shrink`` of the
        correction over the base (the spread around the mean is kept whole)."""
        if self.shrink == 1.0 or pred.shape[0] == 0:
            return pred
        base = self._base_delta(perturbation, context, pred.shape[1])
        return x_ctrl + base + shrink_change(pred - x_ctrl - base, self.shrink)

    def _fallback_state(self) -> dict[str, np.ndarray]:
        state = {"base_name": np.asarray(self.base_name), "shrink": np.asarray(self.shrink)}
        if self.base_model is not None:
            state.update({f"base.{k}": v for k, v in self.base_model._state().items()})
        return state

    def _set_fallback_state(self, state: dict[str, np.ndarray]) -> None:
        from . import get_model_class

        self.base_name = str(state.get("base_name", "none"))
        self.shrink = float(state.get("shrink", 1.0))
        self.base_model = None
        if self.base_name != "none":
            base = get_model_class(self.base_name)(seed=self.seed)
            base.genes, base.keys = self.genes, self.keys
            base.vocabulary, base.contexts = self.vocabulary, self.contexts
            base._set_state({k[5:]: v for k, v in state.items() if k.startswith("base.")})
            self.base_model = base
