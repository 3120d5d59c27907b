"""How ``base=auto`` picks among its candidates from their out-of-fold mean changes.

Every candidate base is scored per held-out training condition (its out-of-fold mean change
against the condition's real one, averaged over the inner-fold assignments):

- ``sq_error``: squared error summed over genes (the ``error`` rule's criterion);
- ``pearson``: Pearson correlation (pearson_delta; 0 where the prediction is constant);
- ``abs_error``: mean absolute error over genes (mae);
- ``disc``: 1 - the share of the other held-out conditions of the same context whose real
  mean change is closer (L1) to the prediction than the condition's own (discrimination);
- ``overlap``: the share of the condition's top genes by absolute real change that are also
  the prediction's top genes (a stand-in for the DE overlap of the VCC score).

Rules (``base_rule``):

- ``error`` (default): the smallest mean squared error.
- ``parity_score``: the candidates within one standard error (paired over the held-out
  conditions) of the best on squared error *and* of the best on pearson, then, among them, the
  best VCC-like score of the last three against cell_mean's (each part ``1 - mae/mae_ref`` or
  ``(v - ref) / (1 - ref)``, clipped at 0, averaged; ties go to the smaller error, then to
  the first candidate). When no candidate is within one standard error on both, it takes the
  ``error`` rule's choice, as it does without cell_mean among the candidates. This writes
  issue 12's goal (never worse than the best simple model on error and correlation, better on
  the score) as a choice on the training conditions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError

RULES = ("error", "parity_score")
STATS = ("sq_error", "pearson", "abs_error", "disc", "overlap")
N_TOP = 50


@dataclass
class InnerBaseTable:
    """Per candidate, per held-out training condition, the statistics of :data:`STATS`
    averaged over the inner-fold assignments: ``stats[name][stat]``, shape (n_scored,)."""

    needed: tuple[str, ...] = STATS  # (``sq_error``,) for the error rule: the others cost more
    _sums: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    _n: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_stats(cls, stats: dict[str, dict[str, np.ndarray]]) -> InnerBaseTable:
        """A table holding ``stats`` as one assignment's statistics (``needed`` from them)."""
        needed = tuple(next(iter(stats.values()))) if stats else STATS
        return cls(needed=needed, _sums={name: {k: np.asarray(v, float) for k, v in s.items()}
                                         for name, s in stats.items()},
                   _n=dict.fromkeys(stats, 1))

    def add(self, name: str, pred: np.ndarray, real: np.ndarray, contexts: np.ndarray) -> None:
        """Add one assignment's out-of-fold mean changes ``pred`` of the held-out conditions,
        shape (n_scored, n_genes), against ``real`` (same shape); ``contexts`` (n_scored,)."""
        new = condition_stats(pred, real, contexts, self.needed)
        sums = self._sums.setdefault(name, {k: np.zeros(len(real)) for k in self.needed})
        for k in self.needed:
            sums[k] += new[k]
        self._n[name] = self._n.get(name, 0) + 1

    @property
    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """The averages over the assignments added so far, computed from the running sums."""
        return {name: {k: v / self._n[name] for k, v in sums.items()}
                for name, sums in self._sums.items()}

    def mean(self, stat: str) -> dict[str, float]:
        return {name: float(s[stat].mean()) for name, s in self.stats.items()}


def condition_stats(pred: np.ndarray, real: np.ndarray, contexts: np.ndarray,
                    needed: tuple[str, ...] = STATS) -> dict[str, np.ndarray]:
    """The ``needed`` :data:`STATS` of each row of ``pred`` (n, G) against the same row of
    ``real``. A condition alone in its context gets ``disc`` 1 (nothing to tell it from, the
    same for every candidate); a constant prediction gets ``pearson`` and ``overlap`` 0."""
    n, g = real.shape
    out = {}
    if "sq_error" in needed:
        out["sq_error"] = ((pred - real) ** 2).sum(1)
    if "abs_error" in needed:
        out["abs_error"] = np.abs(pred - real).mean(1)
    constant = np.ptp(pred, axis=1) == 0
    if "pearson" in needed:
        pc, rc = pred - pred.mean(1, keepdims=True), real - real.mean(1, keepdims=True)
        den = np.sqrt((pc ** 2).sum(1) * (rc ** 2).sum(1))
        out["pearson"] = np.where(den > 0, (pc * rc).sum(1) / np.where(den > 0, den, 1), 0.0)
    if "disc" in needed:
        out["disc"] = _discrimination(pred, real, contexts)
    if "overlap" in needed:
        k = max(1, min(N_TOP, g // 4))
        top_real = np.argpartition(-np.abs(real), k - 1, axis=1)[:, :k]
        top_pred = np.argpartition(-np.abs(pred), k - 1, axis=1)[:, :k]
        out["overlap"] = np.array([0.0 if c else np.intersect1d(a, b).size / k for a, b, c in
                                   zip(top_real, top_pred, constant, strict=True)])
    return out


def _discrimination(pred: np.ndarray, real: np.ndarray, contexts: np.ndarray,
                    block: int = 256) -> np.ndarray:
    """1 - the share of the other conditions of the same context whose real row is closer (L1)
    to the prediction than the condition's own, shape (n,)."""
    from scipy.spatial.distance import cdist

    disc = np.ones(len(real))
    for ctx in np.unique(contexts):
        idx = np.flatnonzero(contexts == ctx)
        if idx.size < 2:
            continue
        for start in range(0, idx.size, block):  # (block, n) distances at a time
            rows = idx[start:start + block]
            dist = cdist(pred[rows], real[idx], "cityblock")
            own = dist[np.arange(rows.size), start + np.arange(rows.size)]  # same rounding
            closer = (dist < own[:, None]).sum(1)
            disc[rows] = 1.0 - closer / (idx.size - 1)
    return disc


def _within_se(values: dict[str, np.ndarray], best: str, lower_better: bool) -> set[str]:
    """Names whose paired mean difference from ``best`` is within one standard error."""
    keep = set()
    for name, v in values.items():
        d = (v - values[best]) if lower_better else (values[best] - v)
        se = d.std(ddof=1) / np.sqrt(d.size) if d.size > 1 else 0.0
        if d.mean() <= se + 1e-12:
            keep.add(name)
    return keep


def vcc_like(table: InnerBaseTable, reference: str = "cell_mean") -> dict[str, float]:
    """The VCC-like score of every candidate against ``reference`` (see the module
    docstring); NaN for all when the reference is not a candidate."""
    if reference not in table.stats:
        return {name: float("nan") for name in table.stats}
    mae, disc, over = (table.mean(s) for s in ("abs_error", "disc", "overlap"))
    out = {}
    for name in table.stats:
        parts = [1 - mae[name] / mae[reference] if mae[reference] > 0 else 0.0]
        for v in (disc, over):
            ref = v[reference]
            parts.append((v[name] - ref) / (1 - ref) if ref < 1 else 0.0)
        out[name] = float(np.mean(np.clip(parts, 0, None)))
    return out


def check_rule(rule: str, who: str) -> None:
    if rule not in RULES:
        raise InputError(f"{who}: base_rule={rule!r} is not one of {', '.join(RULES)}.")


def rule_choice(table: InnerBaseTable, rule: str) -> str:
    """The candidate ``rule`` picks (see the module docstring)."""
    errors = table.mean("sq_error")
    best = min(errors, key=errors.get)
    if rule == "error":
        return best
    if rule != "parity_score":
        raise ValueError(f"unknown base rule {rule!r}")
    if set(STATS) - set(table.needed):
        raise ValueError("parity_score needs every statistic: InnerBaseTable(needed=STATS)")
    sq = {n: s["sq_error"] for n, s in table.stats.items()}
    corr = {n: s["pearson"] for n, s in table.stats.items()}
    mean_corr = table.mean("pearson")
    keep = (_within_se(sq, best, True) &
            _within_se(corr, max(mean_corr, key=mean_corr.get), False))
    score = vcc_like(table)
    if not keep or any(np.isnan(v) for v in score.values()):
        return best
    order = list(table.stats)  # ties (identical candidates) go to the first, as with error
    return min(keep, key=lambda n: (-score[n], errors[n], order.index(n)))
