"""Set models on top of a baseline (residual), the training budget, ensembles and spread."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_set_models import TINY, _known_shift_adata

from perturbcast.data import make_split, read_experiment
from perturbcast.errors import InputError
from perturbcast.models import get_model
from perturbcast.models.blend_baseline import MEMBERS as BLEND_MEMBERS
from perturbcast.models.blend_baseline import cross_fitted_blend
from perturbcast.models.set_data import training_budget

FAST = {**TINY, "max_steps": 40}


@pytest.fixture(scope="module")
def shift_exp():
    return read_experiment(_known_shift_adata(), "perturbation", "control", input_scale="log1p")


@pytest.mark.parametrize("name", ["flow", "transition"])
def test_residual_with_zero_training_is_exactly_the_base(shift_exp, name):
    """A+B is unseen; the additive base is (nearly) perfect for it. Without training, the set
    model's cells are the base's cells (same sampled controls + the same delta)."""
    train = shift_exp.perturbations != "A+B"
    conds = [("A+B", "all"), ("A", "all")]
    model = get_model(name, **{**FAST, "base": "additive", "max_steps": 0}).fit(shift_exp, train)
    base = get_model("additive").fit(shift_exp, train)
    pool = np.flatnonzero(shift_exp.is_control)
    x = shift_exp.rows(pool[:50])
    for pert, ctx in conds:  # the cells before they are made non-negative: equal in float32
        np.testing.assert_array_equal(
            model._predict_cells(x, pert, ctx, shift_exp, pool, pool[:50]).astype(np.float32),
            base._predict_cells(x, pert, ctx, shift_exp, pool, pool[:50]).astype(np.float32))
    # made non-negative per gene (its mean): a float32 ulp may move a column's scale
    np.testing.assert_allclose(model.predict(shift_exp, conds, n_cells=50).X,
                               base.predict(shift_exp, conds, n_cells=50).X, rtol=0, atol=1e-6)
    assert model.training_summary["base"] == "additive"
    assert model.training_summary["steps"] == 0


def test_residual_training_uses_out_of_fold_base_deltas(shift_exp):
    """The base delta a training condition sees comes from the base fitted without it: with
    the context-mean base, A's base is the mean of the other singles, not A's own delta."""
    train = shift_exp.perturbations != "A+B"
    model = get_model("transition", **{**FAST, "base": "context_mean", "max_steps": 0})
    model.fit(shift_exp, train)
    assert model.training_summary["inner_unit"] == "perturbation"
    own = get_model("context_mean").fit(shift_exp, train)
    others = get_model("context_mean").fit(shift_exp, train & (shift_exp.perturbations != "A"))
    from perturbcast.models.set_residual import choose_base

    keys = [("A", "all"), ("B", "all"), ("C", "all")]
    _, oof, _ = choose_base("context_mean", shift_exp, train, keys, "auto", 5, 0)
    np.testing.assert_allclose(oof[0], others.delta("A", "all"), atol=1e-6)
    assert not np.allclose(oof[0], own.delta("A", "all"), atol=1e-3)


def test_auto_base_error_is_averaged_over_repeated_inner_folds(sim_exp):
    """``auto`` scores each candidate on ``BASE_REPEATS`` fold assignments (the first is the
    one the network trains on) and averages: one assignment's choice follows the seed."""
    from perturbcast.models import set_residual as sr

    fold = make_split(sim_exp, "combo", n_folds=2, seed=0).folds[0]
    train, keys = fold.train_mask(sim_exp), sorted(map(tuple, fold.train))
    _, oof, summary = sr.choose_base("auto", sim_exp, train, keys, "perturbation", 3, 4)
    assert summary["inner_repeats"] == sr.BASE_REPEATS > 1 and summary["base"] == "blend"
    real = sr.real_deltas(sim_exp, train, keys)
    unit = summary["inner_unit"]
    per_repeat = []
    for r in range(sr.BASE_REPEATS):
        folds = sr.inner_folds(keys, unit, 3, 4 + 7919 * r, sim_exp.components)
        deltas = sr.out_of_fold_deltas("linear", sim_exp, train, keys, folds, 4)
        per_repeat.append(((deltas - real) ** 2).sum(1).mean())
        if r == 0:  # the blend wins on this screen: blended from its members' (cross-fitted)
            first = cross_fitted_blend(np.stack([sr.out_of_fold_deltas(
                m, sim_exp, train, keys, folds, 4) for m in BLEND_MEMBERS]), real, folds)
    assert len({round(e, 6) for e in per_repeat}) > 1  # the assignments differ
    assert summary["inner_error"]["linear"] == pytest.approx(np.mean(per_repeat), abs=1e-5)
    np.testing.assert_allclose(oof, first, atol=1e-6)
    fixed = sr.choose_base("linear", sim_exp, train, keys, "perturbation", 3, 4)[2]
    assert fixed["inner_repeats"] == 1


def test_residual_model_saves_and_loads(shift_exp, tmp_path):
    train = shift_exp.perturbations != "A+B"
    model = get_model("transition", **{**FAST, "base": "additive", "n_seeds": 2,
                                       "max_steps": 20}).fit(shift_exp, train)
    conds = [("A+B", "all"), ("C", "all")]
    before = model.predict(shift_exp, conds, n_cells=30)
    model.save(tmp_path / "m")
    loaded = type(model).load(tmp_path / "m")
    after = loaded.predict(shift_exp, conds, n_cells=30)
    np.testing.assert_array_equal(before.X, after.X)
    assert after.uns["perturbcast"]["spread"] == before.uns["perturbcast"]["spread"]


@pytest.mark.parametrize("rule", ["error", "parity_score"])
def test_auto_base_never_reads_the_test_fold(sim_adata, rule):
    """Poisoning the test fold's expression leaves the choice and its inner errors (and, with
    ``base_rule=parity_score``, its inner scores) unchanged."""
    exp = read_experiment(sim_adata, "perturbation", "control", context_key="context")
    fold = make_split(exp, "combo", n_folds=2, seed=0).folds[0]
    train = fold.train_mask(exp)
    params = {**FAST, "max_steps": 0, "base": "auto", "embeddings": "none", "base_rule": rule}
    clean = get_model("transition", **params).fit(exp, train).training_summary
    poisoned = sim_adata.copy()
    rng = np.random.default_rng(0)
    test = np.flatnonzero(fold.test_mask(exp))
    x = poisoned.X.toarray()
    x[test] = rng.poisson(50.0, (test.size, x.shape[1]))
    poisoned.X = x
    exp2 = read_experiment(poisoned, "perturbation", "control", context_key="context")
    dirty = get_model("transition", **params).fit(exp2, train).training_summary
    assert clean["base"] == dirty["base"] and clean["base"] != "none"
    assert clean["inner_error"] == dirty["inner_error"]
    assert clean["inner_unit"] == "combo"  # combos held out, their singles kept
    assert clean["base_rule"] == rule
    assert clean.get("inner_score") == dirty.get("inner_score")
    assert ("inner_score" in clean) == (rule == "parity_score")


def test_base_must_be_a_baseline_with_a_delta():
    with pytest.raises(InputError, match="base='control'"):  # no change: base=none says it
        get_model("flow", base="control")
    with pytest.raises(InputError, match="base='kmeans'"):
        get_model("flow", base="kmeans")
    with pytest.raises(InputError, match="n_seeds"):
        get_model("flow", n_seeds=0)


def test_budget_scales_with_the_data():
    p = get_model("flow").params
    assert training_budget(p, 600)[0].max_steps == 200  # min_steps: a 600-cell file
    assert training_budget(p, 6_000)[0].max_steps == 879  # 150 passes over 6,000 cells
    assert training_budget(p, 10**6)[0].max_steps == 1000  # the max_steps cap
    assert training_budget({**p, "max_epochs": None}, 600)[0].max_steps == 1000
    assert get_model("flow", max_epochs="None").params["max_epochs"] is None  # --param


def test_budget_stops_on_a_plateau(shift_exp):
    """Two validations (100 steps apart) without a 10% gain stop a 3,000-step budget."""
    model = get_model("transition", **{**TINY, "max_steps": 3000, "patience": 1,
                                       "min_delta": 0.1, "set_size": 16, "n_sets": 4})
    model.fit(shift_exp)
    summary = model.training_summary
    assert summary["stopped_early"] and summary["steps"] < 3000
    assert len(summary["val_loss_per_epoch"]) == summary["steps"] // 100


def test_ensemble_of_identical_members_is_one_member(shift_exp):
    train = shift_exp.perturbations != "A+B"
    model = get_model("transition", **FAST).fit(shift_exp, train)
    conds = [("A+B", "all"), ("B", "all")]
    one = model.predict(shift_exp, conds, n_cells=40)
    assert set(one.uns["perturbcast"]["spread"].values()) == {0.0}
    model.members = [model.net, copy.deepcopy(model.net), copy.deepcopy(model.net)]
    three = model.predict(shift_exp, conds, n_cells=40)
    np.testing.assert_array_equal(one.X, three.X)
    assert set(model.prediction_spread().values()) == {0.0}


def test_ensemble_spread_is_positive_for_different_seeds(shift_exp):
    train = shift_exp.perturbations != "A+B"
    model = get_model("transition", **{**FAST, "n_seeds": 2}).fit(shift_exp, train)
    assert len(model.members) == 2 and model.training_summary["member_steps"] == [40, 40]
    pred = model.predict(shift_exp, [("A+B", "all"), ("A", "all")], n_cells=40)
    spread = pred.uns["perturbcast"]["spread"]
    assert set(spread) == {"A+B|all", "A|all"} and min(spread.values()) > 0
    # the ensemble's mean change is the members' average (same sampled controls)
    full = np.asarray(model.predict(shift_exp, [("A", "all")], n_cells=40).X).mean(0)
    means = []
    for net in list(model.members):
        model.members = [net]
        means.append(np.asarray(model.predict(shift_exp, [("A", "all")], n_cells=40).X).mean(0))
    np.testing.assert_allclose(full, np.mean(means, 0), atol=1e-3)


def test_benchmark_reports_spread_and_choices_per_fold(sim_exp):
    from perturbcast.benchmark import run_benchmark

    split = make_split(sim_exp, "combo", n_folds=2, seed=0)
    split.folds = split.folds[:1]
    # untrained members differ by their random initial shift weights (with a base those start
    # at zero: members identical to the base, spread 0)
    params = {"transition": {**FAST, "max_steps": 0, "n_seeds": 2}}
    res = run_benchmark(sim_exp, split, ["additive", "transition"], model_params=params,
                        edistance=False, show_progress=False)
    pp = res.per_perturbation
    assert (pp[pp.model == "transition"].spread > 0).all()
    assert pp[pp.model == "additive"].spread.isna().all()
    row = res.fits.set_index("model").loc["transition"]
    assert row["base"] == "none" and row["steps"] == 0 and row["fit_s"] > 0
    (cal,) = res.calibration()  # the ensemble only
    assert cal.model == "transition" and cal.n == (pp.model == "transition").sum()
    assert cal.informative == cal.n and -1 <= cal.spearman <= 1


def test_inner_folds_hold_out_what_the_split_would():
    from perturbcast.data.labels import components
    from perturbcast.models.set_residual import inner_folds, inner_unit

    def split(label):
        return components(label, "+", "control")

    combo = [("A", "c"), ("B", "c"), ("C", "c"), ("A+B", "c"), ("A+C", "c")]
    assert inner_unit(combo, "auto", split) == "combo"
    folds = inner_folds(combo, "combo", 5, 0, split)
    assert (folds[:3] == -1).all() and sorted(folds[3:]) == [0, 1]  # singles stay in
    unseen = [("A", "c"), ("B", "c"), ("A+D", "c"), ("B+D", "c")]  # D is not a training single
    assert inner_unit(unseen, "auto", split) == "perturbation"
    mostly = [*combo, ("A+D", "c"), ("B+D", "c")]  # 2 of 4 combos have both singles in training
    assert inner_unit(mostly, "auto", split) == "combo"
    cross = [("A", "x"), ("A", "y"), ("B", "x")]  # B lacks context y: cross-context shape
    assert inner_unit(cross, "auto", split) == "condition"
    assert inner_unit([("A", "x"), ("A", "y")], "auto", split) == "condition"


def test_early_stopping_state_survives_a_resume_checkpoint():
    """A resumed run continues the patience count (reference, wait) where the killed run was,
    so it stops at the same epoch as one never interrupted."""
    from types import SimpleNamespace

    from perturbcast.train.lightning import SetTrainingModule, TrainConfig, _Stream

    def module() -> SetTrainingModule:
        m = SetTrainingModule(torch.nn.Linear(2, 2), lambda n, b: 0,
                              TrainConfig(patience=2, min_delta=0.1), {})
        m.stream = _Stream(dict, 10, np.random.default_rng(0))
        m._trainer = SimpleNamespace(callback_metrics={}, should_stop=False)
        return m

    def validate(m: SetTrainingModule, loss: float) -> None:
        m.trainer.callback_metrics["val_loss"] = torch.tensor(loss)
        m.on_validation_epoch_end()

    killed, resumed = module(), module()
    for loss in (1.0, 0.95):  # 0.95 is not 10% below 1.0: one validation without improvement
        validate(killed, loss)
    ckpt = {"global_step": 3}
    killed.on_save_checkpoint(ckpt)
    resumed.on_load_checkpoint(ckpt)
    assert killed.wait == 1 and killed.reference == pytest.approx(1.0)
    assert (resumed.reference, resumed.wait, resumed.best_loss) == (
        killed.reference, killed.wait, killed.best_loss)
    assert resumed.history == killed.history
    validate(resumed, 0.97)
    assert resumed.stopped_early and resumed.trainer.should_stop


def test_ensemble_members_resume_from_their_own_checkpoints(shift_exp, tmp_path):
    """Each member keeps its own ``last.ckpt`` (member 1 in ``member1/``); a resumed fit
    continues every member from its own and ends with the same weights."""
    from perturbcast.train.resume import resumable

    params = {**FAST, "n_seeds": 2}
    with resumable(tmp_path, every_n_steps=5):
        whole = get_model("transition", **params).fit(shift_exp)
    assert (tmp_path / "last.ckpt").exists() and (tmp_path / "member1" / "last.ckpt").exists()
    with resumable(tmp_path, every_n_steps=5, resume=True):
        resumed = get_model("transition", **params).fit(shift_exp)
    for a, b in zip(whole.members, resumed.members, strict=True):
        for k, v in a.state_dict().items():
            torch.testing.assert_close(v, b.state_dict()[k], rtol=0, atol=0, msg=k)
