import numpy as np
import pytest

from perturbcast import InputError, make_split
from perturbcast.data import Split, read_experiment


def test_unseen_perturbation_folds(sim_exp, tmp_path):
    split = make_split(sim_exp, "unseen-perturbation", n_folds=3, seed=1)
    assert len(split.folds) == 3
    seen_test = []
    for f in split.folds:
        test_p = {p for p, _ in f.test}
        train_p = {p for p, _ in f.train}
        assert test_p and not (test_p & train_p)
        seen_test += sorted(test_p)
        tm = f.train_mask(sim_exp)
        assert tm[sim_exp.is_control].all() and not (tm & f.test_mask(sim_exp)).any()
    assert sorted(seen_test) == sim_exp.perturbation_names()
    # deterministic by seed, different across seeds, JSON round trip
    again = make_split(sim_exp, "unseen-perturbation", n_folds=3, seed=1)
    assert [f.test for f in again.folds] == [f.test for f in split.folds]
    other = make_split(sim_exp, "unseen-perturbation", n_folds=3, seed=2)
    assert [f.test for f in other.folds] != [f.test for f in split.folds]
    split.to_json(tmp_path / "s.json")
    back = Split.from_json(tmp_path / "s.json")
    assert [f.test for f in back.folds] == [f.test for f in split.folds]
    assert back.kind == "unseen-perturbation" and back.seed == 1


def test_combo_split_keeps_singles(sim_exp):
    split = make_split(sim_exp, "combo", n_folds=2, seed=0)
    singles = {p for p in sim_exp.perturbation_names() if "+" not in p}
    tested = []
    for f in split.folds:
        assert singles <= {p for p, _ in f.train}
        assert all("+" in p for p, _ in f.test)
        tested += [c for c in f.test]
    assert sorted(tested) == sorted(c for c in map(tuple, sim_exp.conditions()[
        ["perturbation", "context"]].to_numpy()) if "+" in c[0])


def test_unseen_context_few_shot(sim_exp):
    split = make_split(sim_exp, "unseen-context", holdout_fraction=0.25, seed=0)
    assert [f.name for f in split.folds] == ["context=ctx0", "context=ctx1"]
    for f in split.folds:
        ctx = f.test_contexts()
        assert len(ctx) == 1
        n_ctx = sum(1 for _, c in f.train + f.test if c == ctx[0])
        assert len(f.test) == round(0.25 * n_ctx)
        for p, _ in f.test:  # held-out perturbations are seen in the other context
            assert any(q == p and c != ctx[0] for q, c in f.train)


def test_split_errors(sim_adata):
    single = sim_adata[~sim_adata.obs.perturbation.astype(str).str.contains(r"\+")].copy()
    exp = read_experiment(single, "perturbation", "control")
    with pytest.raises(InputError, match="combination"):
        make_split(exp, "combo")
    with pytest.raises(InputError, match="context"):
        make_split(exp, "unseen-context")
    with pytest.raises(InputError, match="unknown split"):
        make_split(exp, "random")
    no_ctrl = sim_adata[~((sim_adata.obs.perturbation == "control") &
                          (sim_adata.obs.context == "ctx1")).to_numpy()].copy()
    exp2 = read_experiment(no_ctrl, "perturbation", "control", context_key="context")
    with pytest.raises(InputError, match="no control cells"):
        make_split(exp2, "unseen-perturbation")
    assert np.all(exp2.contexts[exp2.is_control] == "ctx0")
