"""The ``blend`` baseline: non-negative weights of the other baselines, from inner folds."""

from __future__ import annotations

import numpy as np
import pytest

from perturbcast.data import make_split, read_experiment
from perturbcast.errors import InputError
from perturbcast.models import get_model
from perturbcast.models import set_residual as sr
from perturbcast.models.blend_baseline import MEMBERS, blend_weights, cross_fitted_blend


def test_weights_recover_a_known_non_negative_mix():
    rng = np.random.default_rng(0)
    members = rng.normal(size=(4, 30, 12))
    real = 0.7 * members[0] + 0.2 * members[2]
    np.testing.assert_allclose(blend_weights(members, real), [0.7, 0, 0.2, 0], atol=1e-8)
    # a member that helps only with a negative weight gets zero, the others are refitted
    w = blend_weights(members, real - 0.5 * members[3])
    assert w[3] == 0 and (w >= 0).all()
    # nothing to explain: no change
    np.testing.assert_allclose(blend_weights(members, np.zeros((30, 12))), 0, atol=1e-12)
    # identical members cannot be told apart: the first takes their weight; zeros get none
    twins = np.stack([members[0], members[1], members[1], np.zeros((30, 12))])
    np.testing.assert_allclose(blend_weights(twins, 0.3 * members[0] + 0.6 * members[1]),
                               [0.3, 0.6, 0, 0], atol=1e-8)


def test_cross_fitted_blend_never_uses_a_folds_own_real_deltas():
    """Each inner fold is blended with weights fitted on the other folds: changing the real
    deltas of fold 0 does not change fold 0's blended deltas, and changes fold 1's."""
    rng = np.random.default_rng(1)
    members = rng.normal(size=(3, 12, 8))
    real = members[0] + 0.1 * rng.normal(size=(12, 8))
    folds = np.repeat([0, 1, 2], 4)
    before = cross_fitted_blend(members, real, folds)
    changed = real.copy()
    changed[folds == 0] = members[1][folds == 0]
    after = cross_fitted_blend(members, changed, folds)
    np.testing.assert_array_equal(before[folds == 0], after[folds == 0])
    assert not np.allclose(before[folds == 1], after[folds == 1])
    np.testing.assert_allclose(before, members[0], atol=0.1)
    with pytest.raises(ValueError, match="two inner folds"):  # one fold: its own weights
        cross_fitted_blend(members, real, np.zeros(12, int))


@pytest.fixture(scope="module")
def combo_fold(sim_exp):
    fold = make_split(sim_exp, "combo", n_folds=2, seed=0).folds[0]
    return fold.train_mask(sim_exp), [tuple(t) for t in fold.test]


def test_blend_is_its_weighted_members_and_is_refitted_on_all_training_cells(sim_exp,
                                                                            combo_fold):
    train, test = combo_fold
    blend = get_model("blend", embeddings="train").fit(sim_exp, train)
    assert blend.training_summary["inner_unit"] == "combo"
    assert (blend.weights >= 0).all() and blend.weights.sum() > 0
    singles = {n: get_model(n, **({"embeddings": "train"} if n in ("linear", "knn") else {}))
               .fit(sim_exp, train) for n in MEMBERS}
    for pert, ctx in test:
        want = sum(w * singles[n].delta(pert, ctx) for w, n in zip(blend.weights, MEMBERS,
                                                                     strict=True))
        np.testing.assert_allclose(blend.delta(pert, ctx), want, atol=1e-10)
    # the weights: least squares on the members' out-of-fold deltas, pooled over the
    # BASE_REPEATS assignments (recomputed here from the inner folds)
    keys = list(zip(blend.cond_pert.tolist(), blend.cond_ctx.tolist(), strict=True))
    unit, assignments = sr.inner_assignments(keys, "auto", 5, 0, sim_exp.components)
    real = sr.real_deltas(sim_exp, train, keys)
    member = blend._member
    stacked = [np.stack([sr.out_of_fold_deltas(n, sim_exp, train, keys, f, 0, make=member)
                         for n in MEMBERS])[:, f >= 0] for f in assignments]
    want = blend_weights(np.concatenate(stacked, axis=1),
                         np.concatenate([real[f >= 0] for f in assignments]))
    np.testing.assert_allclose(blend.weights, want, rtol=1e-6, atol=1e-9)
    in_sample = blend_weights(np.stack([np.stack([singles[n].delta(*k) for k in keys])
                                        for n in MEMBERS]), real)
    assert not np.allclose(blend.weights, in_sample, atol=1e-3)  # not fitted in sample
    # on combos the additive member carries weight (the simulator's combos are near-additive)
    assert blend.weights[MEMBERS.index("additive")] > 0.2
    assert blend.describe_weights().split()[0].startswith(("additive", "linear"))
    assert blend.training_summary == {"blend_weights": blend.describe_weights(),
                                      "inner_unit": "combo"}


def test_blend_never_reads_the_test_fold(sim_adata):
    exp = read_experiment(sim_adata, "perturbation", "control", context_key="context")
    fold = make_split(exp, "combo", n_folds=2, seed=0).folds[0]
    train = fold.train_mask(exp)
    clean = get_model("blend", embeddings="train").fit(exp, train)
    poisoned = sim_adata.copy()
    x = poisoned.X.toarray()
    test = np.flatnonzero(fold.test_mask(exp))
    x[test] = np.random.default_rng(0).poisson(50.0, (test.size, x.shape[1]))
    poisoned.X = x
    exp2 = read_experiment(poisoned, "perturbation", "control", context_key="context")
    dirty = get_model("blend", embeddings="train").fit(exp2, train)
    np.testing.assert_array_equal(clean.weights, dirty.weights)
    for pert, ctx in fold.test:
        np.testing.assert_array_equal(clean.delta(pert, ctx), dirty.delta(pert, ctx))


def test_base_blend_is_cross_fitted_and_a_candidate_of_auto(sim_exp, combo_fold):
    """``base=auto`` scores the blend from its members' out-of-fold deltas, each inner fold
    blended with weights from the other folds."""
    train, _ = combo_fold
    keys = sorted({(str(p), str(c)) for p, c in zip(sim_exp.perturbations[train],
                                                     sim_exp.contexts[train], strict=True)
                   if p != sim_exp.control})
    _, oof, summary = sr.choose_base("blend", sim_exp, train, keys, "auto", 3, 2)
    folds = sr.inner_folds(keys, summary["inner_unit"], 3, 2, sim_exp.components)
    real = sr.real_deltas(sim_exp, train, keys)
    members = np.stack([sr.out_of_fold_deltas(m, sim_exp, train, keys, folds, 2)
                        for m in MEMBERS])
    np.testing.assert_allclose(oof, cross_fitted_blend(members, real, folds), atol=1e-10)
    # its inner error: the mean over the assignments of the cross-fitted blend's error
    unit, assignments = sr.inner_assignments(keys, "auto", 3, 2, sim_exp.components)
    errors = []
    for f in assignments:
        m = np.stack([sr.out_of_fold_deltas(n, sim_exp, train, keys, f, 2) for n in MEMBERS])
        errors.append(((cross_fitted_blend(m, real, f) - real)[f >= 0] ** 2).sum(1).mean())
    assert summary["inner_repeats"] == sr.BASE_REPEATS
    assert summary["inner_error"]["blend"] == pytest.approx(np.mean(errors), abs=1e-5)
    auto = sr.choose_base("auto", sim_exp, train, keys, "auto", 3, 2)[2]
    assert auto["inner_error"]["blend"] == summary["inner_error"]["blend"]
    # the pooled weights it hands to the fitted base are those blend itself learns
    fitted = sr.fit_chosen_base("blend", sim_exp, train, 2, auto, 3)
    own = get_model("blend", seed=2, inner_folds=3).fit(sim_exp, train)
    np.testing.assert_allclose(fitted.weights, own.weights, rtol=1e-6, atol=1e-9)
    assert auto["blend_weights"] == own.describe_weights()


def test_inner_folds_must_hold_something_out():
    for name in ("blend", "transition"):
        with pytest.raises(InputError, match="inner_folds=1 must be at least 2"):
            get_model(name, inner_folds=1)
        with pytest.raises(InputError, match="inner_unit='perturbaton'"):
            get_model(name, inner_unit="perturbaton")


def test_one_training_perturbation_makes_blend_cell_mean_and_says_so(sim_exp):
    one = sim_exp.is_control | (sim_exp.perturbations == sorted(
        set(sim_exp.perturbations) - {sim_exp.control})[0])
    one &= sim_exp.contexts == sim_exp.contexts[0]
    with pytest.warns(UserWarning, match="blend is cell_mean here"):
        blend = get_model("blend").fit(sim_exp, one)
    cell_mean = get_model("cell_mean").fit(sim_exp, one)
    np.testing.assert_allclose(blend.delta("X", sim_exp.contexts[0]),
                               cell_mean.delta("X", sim_exp.contexts[0]))


def test_without_cell_mean_the_fallback_names_the_member_it_uses(sim_exp):
    first = sorted(set(sim_exp.perturbations) - {sim_exp.control})[0]
    one = (sim_exp.is_control | (sim_exp.perturbations == first)) & \
        (sim_exp.contexts == sim_exp.contexts[0])
    with pytest.warns(UserWarning, match="blend is additive here"):
        blend = get_model("blend", members="additive,knn").fit(sim_exp, one)
    assert blend.params["members"] == ["additive", "knn"]
    assert blend.describe_weights() == "additive:1.00"


def test_blend_members_must_predict_a_mean_change():
    with pytest.raises(InputError, match="members=.*control"):
        get_model("blend", members=["control", "knn"])
    with pytest.raises(InputError, match="members="):
        get_model("blend", members=[])


def test_a_set_model_on_the_blend_base_saves_and_loads(sim_exp, combo_fold, tmp_path):
    """The base travels inside the set model's state (members included) and predicts the
    same cells after loading."""
    from test_set_models import TINY

    from perturbcast.models.base import PerturbationModel

    train, test = combo_fold
    model = get_model("transition", **{**TINY, "max_steps": 5, "base": "blend",
                                       "shrink": 0.5}).fit(sim_exp, train)
    assert model.training_summary["base"] == "blend"
    before = model.predict(sim_exp, test[:3], n_cells=20)
    model.save(tmp_path / "m")
    loaded = PerturbationModel.load(tmp_path / "m")
    np.testing.assert_array_equal(before.X, loaded.predict(sim_exp, test[:3], n_cells=20).X)
    np.testing.assert_array_equal(loaded.base_model.weights, model.base_model.weights)


def test_predict_names_a_weighted_member_that_falls_back(sim_exp, combo_fold):
    train, test = combo_fold
    blend = get_model("blend", members="linear", embeddings="train").fit(sim_exp, train)
    assert blend.weights[0] > 0
    with pytest.warns(UserWarning, match=r"member linear \(weight .*NOTAGENE"):
        blend.predict(sim_exp, [("NOTAGENE", test[0][1])], n_cells=5)


def test_blend_reports_the_gene_table_its_members_used(sim_exp, combo_fold, tmp_path):
    """The simulated genes have no row in the built-in table, so linear and knn fall back to
    "train": blend reports that table (not its "default" parameter), so the benchmark counts
    it among the baselines with the learned models' table; without linear/knn it takes none."""
    from perturbcast.benchmark import embeddings_of
    from perturbcast.models import PerturbationModel

    train, _ = combo_fold
    with pytest.warns(UserWarning):
        blend = get_model("blend", members="additive,linear", inner_folds=2).fit(sim_exp, train)
    linear = blend.member_models[1]
    assert blend.params["embeddings"] == "default" and linear.embeddings_used == "train"
    assert embeddings_of(blend) == "train" == embeddings_of(linear)
    blend.save(tmp_path / "b")
    assert embeddings_of(PerturbationModel.load(tmp_path / "b")) == "train"
    plain = get_model("blend", members="additive,cell_mean", inner_folds=2).fit(sim_exp, train)
    assert embeddings_of(plain) is None
