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
    # the weights are learned from the training conditions' real deltas: on combos the
    # additive member carries weight (the simulator's combos are near-additive)
    assert blend.weights[MEMBERS.index("additive")] > 0.2
    assert blend.describe_weights().split()[0].startswith(("additive", "linear"))


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
    auto = sr.choose_base("auto", sim_exp, train, keys, "auto", 3, 2)[2]
    assert "blend" in auto["inner_error"]


def test_one_training_perturbation_makes_blend_cell_mean_and_says_so(sim_exp):
    one = sim_exp.is_control | (sim_exp.perturbations == sorted(
        set(sim_exp.perturbations) - {sim_exp.control})[0])
    one &= sim_exp.contexts == sim_exp.contexts[0]
    with pytest.warns(UserWarning, match="blend is cell_mean here"):
        blend = get_model("blend").fit(sim_exp, one)
    cell_mean = get_model("cell_mean").fit(sim_exp, one)
    np.testing.assert_allclose(blend.delta("X", sim_exp.contexts[0]),
                               cell_mean.delta("X", sim_exp.contexts[0]))


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
