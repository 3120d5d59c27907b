"""The in-context model's fall-back toward a baseline (``base`` / ``shrink``, shared with the set
models through :mod:`perturbcast.models.fallback`)."""

from __future__ import annotations

import numpy as np
import pytest
from test_incontext import TINY

from perturbcast.data import read_experiment
from perturbcast.datasets import simulate
from perturbcast.models import get_model, set_shrink

FAST = {**TINY, "pretrain_steps": 5, "finetune_steps": 30}
HELD = ("G0032", "ctx0")  # the test condition: G0032 is seen in the other contexts


@pytest.fixture(scope="module")
def exp():
    adata = simulate(n_genes=60, n_singles=6, n_combos=0, n_contexts=3, n_batches=1,
                     cells_per_condition=40, control_cells=80, seed=7)
    return read_experiment(adata, "perturbation", "control", context_key="context")


def _train(exp):
    return ~((exp.perturbations == HELD[0]) & (exp.contexts == HELD[1]))


def _cells(model, exp):
    """Unclipped predicted cells of HELD from a fixed set of its context's controls."""
    pool = np.flatnonzero(exp.is_control & (exp.contexts == HELD[1]))
    x = exp.rows(pool[:40])[:, model._gene_index(exp)]
    return x, model._predict_cells(x, *HELD, exp, pool, ctrl_idx=pool[:40])


def test_shrink_zero_gives_the_base_mean_and_keeps_the_network_spread(exp):
    model = get_model("incontext", seed=0, base="context_mean", shrink=0, **FAST)
    model.fit(exp, _train(exp))
    base = get_model("context_mean").fit(exp, _train(exp)).delta(*HELD)
    x, pred = _cells(model, exp)
    np.testing.assert_allclose(pred.mean(0) - x.mean(0), base, atol=1e-4)
    model.shrink = 1.0  # the same network, its own prediction
    _, own = _cells(model, exp)
    assert np.abs(own.mean(0) - pred.mean(0)).max() > 1e-3
    np.testing.assert_allclose(own - own.mean(0), pred - pred.mean(0), atol=1e-4)
    model.shrink = 0.5
    _, half = _cells(model, exp)
    np.testing.assert_allclose(half.mean(0), (own.mean(0) + pred.mean(0)) / 2, atol=1e-4)


def test_auto_chooses_on_probes_that_never_see_their_held_out_conditions(exp, tmp_path,
                                                                         monkeypatch):
    """base=auto shrink=auto: each probe's prompt bank (the cells it predicts from) and its
    training lack its held-out conditions and the test condition; the choice is saved."""
    seen = []
    real = set_shrink._probe_predictions

    def spy(probe, exp_, fit_mask, held):
        bank = set(zip(probe.bank["perturbation"], probe.bank["context"], strict=True))
        trained = set(zip(exp_.perturbations[fit_mask], exp_.contexts[fit_mask], strict=True))
        seen.append((held, bank, trained))
        return real(probe, exp_, fit_mask, held)

    monkeypatch.setattr(set_shrink, "_probe_predictions", spy)
    model = get_model("incontext", seed=0, base="auto", shrink="auto", **FAST)
    model.fit(exp, _train(exp))
    summary = model.training_summary
    assert summary["inner_unit"] == "condition" and summary["base"] == model.base_name
    assert len(seen) == summary["shrink_n_probes"] >= 1 and summary["shrink_held_out"] >= 1
    assert float(summary["shrink"]) in set_shrink.GRID
    for held, bank, trained in seen:
        assert not (set(held) | {HELD}) & (bank | trained)
    again = type(model).load(model.save(tmp_path / "m"))
    assert (again.base_name, again.shrink) == (model.base_name, model.shrink)
    conds = [HELD, ("G0013", "ctx1")]
    np.testing.assert_array_equal(np.asarray(model.predict(exp, conds, n_cells=20).X),
                                  np.asarray(again.predict(exp, conds, n_cells=20).X))


def test_default_is_the_network_alone(exp):
    model = get_model("incontext", seed=0, **FAST)
    assert model.params["base"] == "none" and model.params["shrink"] == 1.0
    model.fit(exp, _train(exp))
    assert model.base_model is None and model.training_summary["shrink"] == 1.0
