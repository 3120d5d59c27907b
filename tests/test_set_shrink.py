"""How much of the learned correction a set model keeps (``shrink``), and how ``auto`` picks it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from test_set_models import TINY, _known_shift_adata

from perturbcast.data import read_experiment
from perturbcast.errors import InputError
from perturbcast.models import get_model, set_shrink

FAST = {**TINY, "max_steps": 40}
COMBOS = ("A", "B", "C", "A+B", "A+C", "B+C")


@pytest.fixture(scope="module")
def shift_exp():
    return read_experiment(_known_shift_adata(), "perturbation", "control", input_scale="log1p")


def _cells(model, exp, pert):
    """Unclipped predicted cells of (pert, "all") from a fixed set of control cells."""
    pool = np.flatnonzero(exp.is_control)
    pick = pool[:60]
    x = exp.rows(pick)[:, model._gene_index(exp)]
    return x, model._predict_cells(x, pert, "all", exp, pool, ctrl_idx=pick)


@pytest.mark.parametrize("name", ["flow", "transition"])
def test_shrink_zero_keeps_the_base_mean_and_the_network_spread(shift_exp, name):
    train = shift_exp.perturbations != "A+B"
    model = get_model(name, **{**FAST, "base": "additive", "shrink": 0}).fit(shift_exp, train)
    base = get_model("additive").fit(shift_exp, train)
    x, pred = _cells(model, shift_exp, "A+B")
    np.testing.assert_allclose(pred.mean(0), x.mean(0) + base.delta("A+B", "all"), atol=1e-4)
    model.shrink = 1.0  # the same network keeping its whole correction moves the mean
    _, full = _cells(model, shift_exp, "A+B")
    assert np.abs(full.mean(0) - pred.mean(0)).max() > 1e-3
    # the cells around the mean are the network's, not the controls shifted by the base
    np.testing.assert_allclose(full - full.mean(0), pred - pred.mean(0), atol=1e-4)
    assert np.abs((pred - pred.mean(0)) - (x - x.mean(0))).max() > 1e-3


def test_chosen_shrink_is_saved_with_the_model(shift_exp, tmp_path, monkeypatch):
    """``auto`` picks a share at fit time; the saved model predicts with that share (its
    params still say ``auto``)."""
    def fake(probe, exp, fit_mask, held):  # a correction twice the miss: the best share is 0.5
        x = np.full((2, exp.n_genes), 10.0)
        return [(x, np.zeros(exp.n_genes), np.tile(2.0 * r, (2, 1)))
                for r in set_shrink.real_deltas(exp, np.ones(exp.n_cells, bool), held)]

    monkeypatch.setattr(set_shrink, "_probe_predictions", fake)
    train = shift_exp.perturbations != "A+B"
    model = get_model("transition", **{**FAST, "base": "additive", "shrink": "auto"})
    model.fit(shift_exp, train)
    assert model.shrink == 0.5
    again = type(model).load(model.save(tmp_path / "m"))
    assert again.params["shrink"] == "auto" and again.shrink == 0.5
    np.testing.assert_array_equal(_cells(model, shift_exp, "A+B")[1],
                                  _cells(again, shift_exp, "A+B")[1])


def test_shrink_zero_ensemble_has_no_spread(shift_exp):
    """Members that all keep none of their correction predict the same mean: spread 0."""
    train = shift_exp.perturbations != "A+B"
    conds = [("A+B", "all"), ("C", "all")]
    zero = get_model("transition", **{**FAST, "base": "additive", "shrink": 0, "n_seeds": 2})
    spread = zero.fit(shift_exp, train).predict(shift_exp, conds, n_cells=40)
    assert max(spread.uns["perturbcast"]["spread"].values()) < 1e-5
    zero.shrink = 1.0
    full = zero.predict(shift_exp, conds, n_cells=40).uns["perturbcast"]["spread"]
    assert min(full.values()) > 1e-4


@pytest.mark.parametrize("min_held, n_probes", [(8, 2), (1, 1)])
def test_probes_never_see_their_held_out_inner_fold(monkeypatch, min_held, n_probes):
    """Each probe (and its base) trains without its held-out inner fold's cells; probes hold
    out inner folds in turn until ``MIN_HELD_OUT`` conditions are scored (here the two inner
    folds A+B and A+C; with a minimum of 1, the first probe is enough)."""
    adata = _known_shift_adata(labels=COMBOS, n=80)
    exp = read_experiment(adata, "perturbation", "control", input_scale="log1p")
    seen = []
    real = set_shrink._probe_predictions

    def spy(probe, exp_, fit_mask, held):
        seen.append((sorted(set(exp_.perturbations[fit_mask])), held,
                     probe.base_model.cond_pert.tolist()))
        return real(probe, exp_, fit_mask, held)

    monkeypatch.setattr(set_shrink, "_probe_predictions", spy)
    monkeypatch.setattr(set_shrink, "MIN_HELD_OUT", min_held)
    model = get_model("transition", **{**FAST, "base": "additive", "shrink": "auto"}).fit(
        exp, exp.perturbations != "B+C")
    assert len(seen) == n_probes == model.training_summary["shrink_n_probes"]
    assert model.training_summary["shrink_held_out"] == n_probes
    held_out = {h[0][0] for _, h, _ in seen}
    assert len(held_out) == n_probes and held_out <= {"A+B", "A+C"}
    for trained, held, base_perts in seen:
        assert len(held) == 1 and held[0][0] in ("A+B", "A+C")
        assert held[0][0] not in trained and "B+C" not in trained
        assert held[0][0] not in base_perts and {"A", "B", "C"} <= set(base_perts)


def _fit_recording_probes(monkeypatch, n: int, fake=None, **params):
    """Fit transition (``FAST`` + ``params``) on the ``COMBOS`` screen without B+C, recording
    the conditions each probe holds out; ``fake`` replaces the probes' predictions."""
    adata = _known_shift_adata(labels=COMBOS, n=n)
    exp = read_experiment(adata, "perturbation", "control", input_scale="log1p")
    calls = []
    predict = fake or set_shrink._probe_predictions
    monkeypatch.setattr(set_shrink, "_probe_predictions",
                        lambda *a: calls.append(a[3]) or predict(*a))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_model("transition", **{**FAST, "shrink": "auto", **params})
        model.fit(exp, exp.perturbations != "B+C")
    return model, calls


def test_probes_stop_at_max_probes(monkeypatch):
    """Never more than ``MAX_PROBES`` extra trainings, however few conditions are scored
    (five inner folds of one perturbation each; the held-out singles cannot be predicted)."""
    monkeypatch.setattr(set_shrink, "MAX_PROBES", 2)
    model, calls = _fit_recording_probes(monkeypatch, 60, base="context_mean",
                                         inner_unit="perturbation")
    assert model.training_summary["inner_folds"] == 5
    assert len(calls) == 2 == model.training_summary["shrink_n_probes"]
    held = [k for h in calls for k in h]
    assert len(held) == len(set(held)) == 2 and ("B+C", "all") not in held


def test_shrink_must_be_a_share_or_auto():
    for bad in (1.5, -0.1, "half"):
        with pytest.raises(InputError, match="shrink="):
            get_model("flow", shrink=bad)
    assert get_model("flow", shrink="0.25").params["shrink"] == 0.25  # from --param
    assert get_model("flow", shrink="AUTO").params["shrink"] == "auto"


@pytest.mark.parametrize("factor, expected", [(0.5, 1.0), (-1.0, 0.0), (1.0, 1.0), (2.0, 0.5)])
def test_auto_picks_the_share_with_the_smallest_held_out_error(shift_exp, monkeypatch,
                                                               factor, expected):
    """With a learned correction of ``factor`` times the base's miss, ``auto`` keeps the share
    that lands nearest the real change (a harmful correction is dropped: share 0)."""
    from perturbcast.models.set_residual import real_deltas

    def fake(probe, exp, fit_mask, held):
        real = real_deltas(exp, np.ones(exp.n_cells, bool), held)
        x = np.full((2, exp.n_genes), 10.0)  # no clipping at 0
        # the base misses 80% of the change; the correction is factor x the miss
        return [(x, r * 0.2, np.tile(factor * r * 0.8, (2, 1))) for r in real]

    monkeypatch.setattr(set_shrink, "_probe_predictions", fake)
    model = get_model("transition", **{**FAST, "base": "context_mean", "shrink": "auto"})
    model.fit(shift_exp, shift_exp.perturbations != "A+B")
    summary = model.training_summary
    assert model.shrink == expected == summary["shrink"]
    assert summary["shrink_held_out"] >= 1
    errors = {float(k): v for k, v in summary["shrink_error"].items()}
    assert set(errors) == set(set_shrink.GRID) and errors[expected] == min(errors.values())
    # the noise of each share's error over the held-out conditions (3 here), for the user
    se = {float(k): v for k, v in summary["shrink_error_se"].items()}
    assert set(se) == set(errors) and se[0.0] > 0 and all(v >= 0 for v in se.values())


def test_auto_shrink_never_reads_the_test_fold():
    """B+C is the test fold; A+B and A+C are the inner folds (each held out by a probe)."""
    adata = _known_shift_adata(labels=COMBOS, n=80)
    exp = read_experiment(adata, "perturbation", "control", input_scale="log1p")
    train = exp.perturbations != "B+C"
    params = {**FAST, "base": "additive", "shrink": "auto"}
    clean = get_model("transition", **params).fit(exp, train).training_summary
    test = (adata.obs["perturbation"] == "B+C").to_numpy()
    adata.X[test] = adata.X[test] * 50 + 7  # a poisoned test fold
    poisoned_exp = read_experiment(adata, "perturbation", "control", input_scale="log1p")
    poisoned = get_model("transition", **params).fit(poisoned_exp, train).training_summary
    assert clean["shrink_held_out"] == 2 and clean["inner_unit"] == "combo"
    assert clean["shrink"] == poisoned["shrink"]
    assert clean["shrink_error"] == poisoned["shrink_error"]


def test_auto_shrink_says_when_it_cannot_choose(shift_exp):
    """Singles named g-less (no gene table row, no learned embedding when held out): the probe
    cannot predict its held-out perturbation, so the whole correction is kept, announced."""
    with pytest.warns(UserWarning, match="shrink=auto could not predict"):
        model = get_model("transition", **{**FAST, "base": "context_mean", "shrink": "auto"})
        model.fit(shift_exp, shift_exp.perturbations != "A+B")
    assert model.shrink == 1.0 and model.training_summary["shrink_held_out"] == 0


def test_defaults_choose_base_and_shrink_on_inner_folds(shift_exp):
    """Out of the box a set model is the fall-back setting: base and shrink chosen on inner
    folds of the training conditions (the network alone is ``base=none shrink=1``)."""
    defaults = {k: v for k, v in FAST.items() if k not in ("base", "shrink")}
    model = get_model("transition", **defaults)
    assert model.params["base"] == "auto" and model.params["shrink"] == "auto"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(shift_exp, shift_exp.perturbations != "A+B")
    summary = model.training_summary
    assert summary["base_requested"] == "auto" and summary["inner_repeats"] > 1
    assert summary["shrink_n_probes"] >= 1 and model.shrink == summary["shrink"]


def test_auto_1se_takes_the_smallest_share_within_one_standard_error(shift_exp, monkeypatch):
    """A correction that helps one held-out condition and hurts the others a little: ``auto``
    keeps the share with the lowest mean error, ``auto_1se`` the smallest share within one
    standard error of it, and both record the same errors."""
    from perturbcast.models.set_residual import real_deltas

    def fake(probe, exp, fit_mask, held):
        real = real_deltas(exp, np.ones(exp.n_cells, bool), held)
        x = np.full((2, exp.n_genes), 10.0)
        u = np.eye(exp.n_genes)[0]
        # A: the base misses by 1 and the correction fixes it, error (1 - s)^2; the others:
        # the base is right and the correction adds 0.5, error 0.25 s^2
        miss = {True: (-1.0, 1.0), False: (0.0, 0.5)}
        return [(x, r + miss[p == "A"][0] * u, np.tile(miss[p == "A"][1] * u, (2, 1)))
                for (p, _), r in zip(held, real, strict=True)]

    monkeypatch.setattr(set_shrink, "_probe_predictions", fake)
    train = shift_exp.perturbations != "A+B"
    fits = {rule: get_model("transition", **{**FAST, "base": "context_mean", "shrink": rule})
            .fit(shift_exp, train) for rule in ("auto", "auto_1se")}
    best, one_se = (fits[r].training_summary for r in ("auto", "auto_1se"))
    assert best["shrink_error"] == one_se["shrink_error"] and best["shrink_held_out"] == 3
    # mean errors (A and two others): 0.75 -> 0.115 (best), 0.5 -> 0.125, within its se 0.026
    errors = {float(k): v for k, v in best["shrink_error"].items()}
    assert errors[0.75] == pytest.approx((0.0625 + 2 * 0.140625) / 3, abs=1e-5)
    assert fits["auto"].shrink == 0.75 and fits["auto_1se"].shrink == 0.5
    assert get_model("flow", shrink="AUTO_1SE").params["shrink"] == "auto_1se"


@pytest.mark.parametrize("probes, expected", [("auto", 1), ("all", 2), (1, 1), ("2", 2), (9, 2)])
def test_shrink_probes_sets_how_many_inner_folds_are_probed(monkeypatch, probes, expected):
    """``auto`` stops once ``MIN_HELD_OUT`` conditions are scored (1 here: one probe);
    ``shrink_probes=k`` runs ``min(k, inner folds)`` probes and ``all`` every inner fold (A+B
    and A+C here), whatever has been scored."""
    monkeypatch.setattr(set_shrink, "MIN_HELD_OUT", 1)
    model, calls = _fit_recording_probes(monkeypatch, 80, base="additive", shrink_probes=probes)
    summary = model.training_summary
    assert len(calls) == expected == summary["shrink_n_probes"] == summary["shrink_held_out"]
    assert sorted(h[0][0] for h in calls) == ["A+B", "A+C"][:expected]


@pytest.mark.parametrize("probes, expected", [("auto", 3), (4, 4), ("all", 5), (7, 5)])
def test_shrink_probes_goes_past_the_default_cap(monkeypatch, probes, expected):
    """Five inner folds of one perturbation each (the held-out singles cannot be predicted, so
    ``auto`` never reaches ``MIN_HELD_OUT`` and stops at ``MAX_PROBES``): a count above the cap
    runs that many probes, ``all`` one per inner fold, each holding out other conditions."""
    model, calls = _fit_recording_probes(
        monkeypatch, 60, fake=lambda probe, exp_, fit_mask, held: ["cannot predict"] * len(held),
        base="context_mean", inner_unit="perturbation", shrink_probes=probes)
    assert model.training_summary["inner_folds"] == 5 == set_shrink.MAX_PROBES + 2
    assert len(calls) == expected == model.training_summary["shrink_n_probes"]
    held = [k for h in calls for k in h]
    assert len(held) == len(set(held)) and ("B+C", "all") not in held


def test_shrink_probes_must_be_auto_all_or_a_count():
    for bad in (0, -1, "many", 2.5, "1.5", True):
        with pytest.raises(InputError, match="shrink_probes="):
            get_model("transition", shrink_probes=bad)
    assert get_model("flow", shrink_probes=" ALL ").params["shrink_probes"] == "all"
    assert get_model("flow", shrink_probes="4").params["shrink_probes"] == 4
    assert get_model("incontext").params["shrink_probes"] == "auto"


def test_shrink_probes_is_saved_and_old_models_load_as_auto(shift_exp, tmp_path):
    import json

    params = {**FAST, "base": "context_mean", "shrink": 0.5, "shrink_probes": 2}
    model = get_model("transition", **params).fit(shift_exp, shift_exp.perturbations != "A+B")
    path = model.save(tmp_path / "m")
    assert type(model).load(path).params["shrink_probes"] == 2
    config = json.loads((path / "config.json").read_text())
    del config["params"]["shrink_probes"]  # as saved before the parameter existed
    (path / "config.json").write_text(json.dumps(config))
    old = type(model).load(path)
    assert old.params["shrink_probes"] == "auto" and old.shrink == 0.5
