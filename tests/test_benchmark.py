"""run_benchmark with seeds, per-model parameters, model groups and the verdict."""

import numpy as np
import pandas as pd
import pytest

from perturbcast import InputError, make_split, read_experiment
from perturbcast.benchmark import run_benchmark
from perturbcast.datasets import simulate
from perturbcast.eval import METRICS
from perturbcast.eval.html_report import verdicts
from perturbcast.models import BASELINES, MODELS
from perturbcast.models.base import PerturbationModel
from perturbcast.models.baselines import AdditiveBaseline, ControlBaseline
from perturbcast.models.gene_baselines import LinearBaseline
from perturbcast.models.selection import parse_seeds, route_params, select_models
from perturbcast.models.set_flow import FlowModel, TransitionModel
from perturbcast.verdict import compare_to_baselines, matched_best_baseline, verdict_line

TINY = dict(max_steps=5, set_size=8, n_sets=2, dim=16, depth=1, n_heads=2, n_latent=8,
            base="none", shrink=1)  # the network alone: one training per fit


def test_param_names_declared_per_model():
    assert LinearBaseline.param_names()[:2] == ("n_components", "ridge")
    assert ControlBaseline.param_names() == ()
    assert {"max_steps", "set_size", "embeddings", "steps", "solver"} <= set(
        FlowModel.param_names())
    assert "max_steps" in TransitionModel.param_names()
    assert "steps" not in TransitionModel.param_names()
    assert "seed" not in LinearBaseline.param_names()


def test_model_groups():
    assert select_models(None) == list(MODELS)
    assert select_models("baselines") == list(BASELINES)
    assert select_models("learned") == [m for m in MODELS if m not in BASELINES]
    assert select_models("additive,flow,additive") == ["additive", "flow"]
    with pytest.raises(InputError, match="unknown model 'nope'"):
        select_models("baselines,nope")
    assert parse_seeds("0, 1,2,1") == [0, 1, 2]
    with pytest.raises(InputError, match="--seeds 'a'"):
        parse_seeds("a")


def test_params_go_to_the_models_that_have_them():
    models = ["additive", "linear", "flow", "transition"]
    routed = route_params(models, {"flow.max_steps": 20})
    assert routed == {"additive": {}, "linear": {}, "flow": {"max_steps": 20}, "transition": {}}
    routed = route_params(models, {"max_steps": 5, "transition.max_steps": 7, "ridge": 1.0,
                                   "steps": 3})
    assert routed["flow"] == {"max_steps": 5, "steps": 3}
    assert routed["transition"] == {"max_steps": 7}
    assert routed["linear"] == {"ridge": 1.0} and routed["additive"] == {}


@pytest.mark.parametrize("params, match", [
    ({"max_step": 5}, "no selected model takes 'max_step'.*did you mean 'max_steps'"),
    ({"flow.nope": 1}, "flow has no parameter 'nope'"),
    ({"transition.steps": 3}, "transition has no parameter 'steps'"),
    ({"linear.ridge": 1}, "'linear' is not among the selected models"),
    ({"ridge": 1}, "no selected model takes 'ridge'"),
    ({"flw.max_steps": 1}, "unknown model 'flw'"),
])
def test_a_param_no_selected_model_has_is_an_error(params, match):
    with pytest.raises(InputError, match=match) as info:
        route_params(["additive", "flow", "transition"], params)
    assert "\n" not in str(info.value)


def test_embeddings_reach_every_model_that_takes_them(monkeypatch):
    class TableModel(AdditiveBaseline):
        name = "table_model"
        takes_embeddings = True

    monkeypatch.setitem(MODELS, "table_model", TableModel)
    routed = route_params(["additive", "table_model", "flow"], {"embeddings": "genes.csv"})
    assert routed["table_model"] == {"embeddings": "genes.csv"}
    assert routed["flow"] == {"embeddings": "genes.csv"} and routed["additive"] == {}


@pytest.fixture(scope="module")
def seeded(sim_exp):
    split = make_split(sim_exp, "combo", n_folds=2, seed=0)
    return run_benchmark(sim_exp, split, ["additive", "transition"], seeds=[0, 1],
                         model_params={"transition": TINY}, show_progress=False)


def test_learned_models_run_per_seed_baselines_once(seeded):
    s = seeded.summary.set_index("model")
    cols = [m for m in METRICS if m in s] + ["score"]
    assert list(seeded.summary.columns) == ["model", *cols, *[f"{c}_sd" for c in cols],
                                            "n_seeds", "embeddings"]
    assert s.n_seeds.to_dict() == {"cell_mean": 1, "additive": 1, "transition": 2}
    assert (s.loc[["cell_mean", "additive"], [f"{c}_sd" for c in cols]] == 0).all().all()
    assert s.embeddings["transition"] == "train" and s.embeddings.isna()["additive"]
    fits = seeded.fits
    assert len(fits) == 2 * (1 + 1 + 2) and (fits.fit_s > 0).all()
    assert sorted(fits[fits.model == "transition"].seed.unique()) == [0, 1]
    assert set(seeded.per_perturbation.seed) == {0, 1}


def test_the_default_fall_back_runs_per_fold_and_records_its_choices(sim_exp):
    """At the set models' default (base=auto shrink=auto) each fold chooses on its own
    training conditions, and fits.csv records what was chosen."""
    from perturbcast.models.set_residual import base_names
    from perturbcast.models.set_shrink import GRID

    split = make_split(sim_exp, "combo", n_folds=2, seed=0)
    default = {k: v for k, v in TINY.items() if k not in ("base", "shrink")}
    res = run_benchmark(sim_exp, split, ["transition"], model_params={"transition": default},
                        show_progress=False)
    fits = res.fits[res.fits.model == "transition"]
    assert len(fits) == 2 and set(fits.fold) == {f.name for f in split.folds}
    assert set(fits.base) <= {"none", *base_names()} and set(fits.shrink) <= set(GRID)
    assert fits.inner_unit.notna().all() and (fits.steps > 0).all()
    row = res.summary.set_index("model").loc["transition"]
    assert np.isfinite(row[["score", "pearson_delta", "mae"]].astype(float)).all()


def test_mean_and_sd_are_over_seeds_of_the_fold_means(seeded):
    """pearson_delta: per (seed, fold, context) the mean over perturbations, then the mean over
    contexts and folds per seed; the summary holds the mean and sd of those per-seed values."""
    per = seeded.per_perturbation
    per = per[per.model == "transition"]
    unit = per.groupby(["seed", "fold", "context"]).pearson_delta.mean()
    per_seed = unit.groupby(level=["seed", "fold"]).mean().groupby(level="seed").mean()
    row = seeded.summary.set_index("model").loc["transition"]
    assert per_seed.size == 2 and per_seed.iloc[0] != per_seed.iloc[1]
    assert row.pearson_delta == pytest.approx(per_seed.mean())
    assert row.pearson_delta_sd == pytest.approx(per_seed.std(ddof=1))


def _summary(rows):
    df = pd.DataFrame(rows, columns=["model", "score", "score_sd", "n_seeds", "embeddings",
                                     "pearson_delta"])
    return df.assign(pearson_delta=df.pearson_delta.fillna(0.5))


def test_verdict_says_who_won_and_whether_it_exceeds_the_spread():
    base = [("cell_mean", 0.0, 0.0, 1, None, None), ("additive", 0.30, 0.0, 1, None, None)]
    wins = _summary(base + [("transition", 0.42, 0.03, 3, "t", None)])
    assert verdict_line(wins, BASELINES) == (
        "transition beats the best baseline additive by +0.120 VCC score (seed spread ±0.030 "
        "over 3 seeds; the difference exceeds it).")
    close = _summary(base + [("transition", 0.32, 0.05, 3, "t", None)])
    assert "within the seed spread ±0.050 over 3 seeds: not a clear win" in verdict_line(
        close, BASELINES)
    loses = _summary(base + [("flow", 0.10, 0.02, 3, "t", None),
                             ("transition", 0.20, 0.01, 3, "t", None)])
    assert verdict_line(loses, BASELINES).startswith(
        "no learned model beats the best baseline additive (0.300 VCC score): the closest, "
        "transition, is -0.100")
    one = _summary(base + [("flow", 0.50, np.nan, 1, "t", None)])
    assert "1 seed: spread not measured" in verdict_line(one, BASELINES)
    assert verdict_line(_summary(base), BASELINES).startswith("baselines only: the best is "
                                                              "additive")
    comp = compare_to_baselines(loses, BASELINES).set_index("model")
    assert comp.exceeds_spread.to_dict() == {"flow": True, "transition": True}


def test_verdict_says_when_the_winners_base_was_not_run():
    """transition (base=auto) stood on blend, which the benchmark did not run: its margin over
    additive may be blend's, and the verdict must say so (a walkthrough's misleading line)."""
    base = [("cell_mean", 0.0, 0.0, 1, None, None), ("additive", 0.30, 0.0, 1, None, None)]
    wins = _summary(base + [("transition", 0.42, 0.03, 3, "t", None)])
    fits = pd.DataFrame({"model": ["additive", "transition", "transition", "transition"],
                         "base": [None, "blend", "blend", "additive"]})
    line = verdict_line(wins, BASELINES, fits)
    assert line.endswith("Its base (blend in 2 of 3 fits) was not run here, so part of that "
                         "margin may be the base's, not the network's: add blend to --models.")
    ran = pd.DataFrame({"model": ["transition"] * 2, "base": ["additive", "none"]})
    assert verdict_line(wins, BASELINES, ran) == verdict_line(wins, BASELINES)
    assert "(blend in 2 of 3 fits) was not run here" in verdicts(wins, "additive", fits)[0]
    assert "was not run" not in verdicts(wins, "additive", ran)[0]  # the HTML report's too


def test_a_bad_parameter_value_is_an_error_not_a_left_out_model():
    """With every model selected, a model that cannot predict a fold is left out with a
    warning; a parameter value of the wrong kind is the user's typo and must stop the run."""
    from perturbcast.benchmark import check_folds

    exp = read_experiment(simulate(n_genes=30, n_singles=4, n_combos=2, n_contexts=1,
                                   cells_per_condition=8, control_cells=20, seed=1),
                          perturbation_key="perturbation", control="control")
    split = make_split(exp, "unseen-perturbation", n_folds=2, seed=0)
    with pytest.raises(InputError, match="max_steps='abc' is not an integer"):
        check_folds(exp, split, ["cell_mean", "transition"],
                    {"transition": {"max_steps": "abc"}}, skip_unable=True)
    # a valid value some models refuse (linear, knn need vectors) still leaves them out
    with pytest.warns(UserWarning, match="linear is left out"):
        kept = check_folds(exp, split, ["cell_mean", "linear", "knn"],
                           {"linear": {"embeddings": "none"}}, skip_unable=True)
    assert kept == ["cell_mean", "knn"]


def test_a_vcc_win_with_worse_pearson_delta_and_mae_is_called_nominal():
    """The McFaline case: transition above cell_mean on the VCC score, far below it on
    pearson_delta and above it on mae. The verdict must not read as a plain win."""
    rows = pd.DataFrame({"model": ["cell_mean", "transition"], "score": [0.0, 0.037],
                         "score_sd": [0.0, 0.0], "n_seeds": [1, 3], "embeddings": [None, "t"],
                         "pearson_delta": [0.622, 0.265], "pearson_delta_sd": [0.0, 0.014],
                         "mae": [0.0414, 0.0570], "mae_sd": [0.0, 0.0002]})
    line = verdict_line(rows, BASELINES)
    assert line.startswith("transition beats the best baseline cell_mean by +0.037")
    assert "A nominal win only: its pearson_delta (0.265 vs 0.622) and mae (0.057 vs 0.0414) " \
           "are worse than cell_mean's." in line
    assert compare_to_baselines(rows, BASELINES).worse_on.tolist() == ["pearson_delta,mae"]
    assert "A nominal win only" in verdicts(rows, "cell_mean")[0]
    one = rows.assign(pearson_delta=[0.5, 0.7])
    assert line != verdict_line(one, BASELINES)
    assert verdict_line(one, BASELINES).endswith("But its mae (0.057 vs 0.0414) is worse than "
                                                 "cell_mean's.")
    within = rows.assign(pearson_delta=[0.5, 0.49], pearson_delta_sd=[0.0, 0.02],
                         mae=[0.05, 0.04])
    assert compare_to_baselines(within, BASELINES).worse_on.tolist() == [""]
    assert verdict_line(within, BASELINES).endswith("the difference exceeds it).")


def test_best_baseline_had_the_same_gene_table():
    rows = [("cell_mean", 0.0, 0.0, 1, None, None), ("additive", 0.30, 0.0, 1, None, None),
            ("linear", 0.50, 0.0, 1, "default", None), ("flow", 0.40, 0.01, 3, "g2w.npz", None)]
    other = _summary(rows)
    assert matched_best_baseline(other, BASELINES) == "additive"
    assert "beats the best baseline additive" in verdict_line(other, BASELINES)
    rows[3] = ("flow", 0.40, 0.01, 3, "default", None)
    same = _summary(rows)
    assert matched_best_baseline(same, BASELINES) == "linear"
    assert "no learned model beats the best baseline linear" in verdict_line(same, BASELINES)


def test_tied_scores_star_the_reference():
    tie = _summary([("control", 0.0, 0.0, 1, None, None), ("cell_mean", 0.0, 0.0, 1, None,
                                                            None)])
    assert matched_best_baseline(tie, BASELINES) == "cell_mean"
    # an exact tie of two other baselines (kang18: context_mean and additive predict the same)
    # stars the simpler one, in either row order (it went to the later row)
    rows = [("context_mean", 0.02, 0.0, 1, None, None), ("additive", 0.02, 0.0, 1, None, None)]
    for order in (rows, rows[::-1]):
        assert matched_best_baseline(_summary(order), BASELINES) == "context_mean"


def test_param_names_default_is_the_init_signature():
    class Custom(PerturbationModel):
        name = "custom"

        def __init__(self, seed: int = 0, width: int = 3, *, depth: int = 2, **params):
            super().__init__(seed=seed, width=width, depth=depth, **params)

        def _fit(self, exp, mask):
            return None

        def _predict_cells(self, x_ctrl, perturbation, context, exp, ctrl_pool, ctrl_idx=None):
            return x_ctrl

    assert Custom.param_names() == ("width", "depth")


def test_spread_calibration_ranks_errors_and_says_when_members_agree():
    from scipy.stats import spearmanr

    from perturbcast.verdict import spread_calibration

    mae = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    rows = [pd.DataFrame({"model": "ranked", "mae": mae, "spread": mae / 10}),
            pd.DataFrame({"model": "reversed", "mae": mae, "spread": mae[::-1] / 10}),
            # shrink=0 in every fold: the members predict the base, up to float rounding
            pd.DataFrame({"model": "agree", "mae": mae, "spread": [1e-9, 3e-9, 0, 2e-9, 5e-10]}),
            pd.DataFrame({"model": "one_member", "mae": mae, "spread": 0.0}),
            pd.DataFrame({"model": "cell_mean", "mae": mae, "spread": np.nan})]
    cal = {c.model: c for c in spread_calibration(pd.concat(rows))}
    assert set(cal) == {"ranked", "reversed", "agree"}
    assert cal["ranked"].spearman == pytest.approx(1.0)
    assert cal["reversed"].spearman == pytest.approx(-1.0)
    assert np.isnan(cal["agree"].spearman) and cal["agree"].informative == 0
    assert "no spread to calibrate" in cal["agree"].line()
    assert "+1.000" in cal["ranked"].line() and "over 5 predictions" in cal["ranked"].line()
    # rounding-level spreads are ties at 0, not a ranking
    mixed = pd.DataFrame({"model": "m", "mae": mae, "spread": [3e-9, 1e-9, 0.03, 0.04, 0.05]})
    (m,) = spread_calibration(mixed)
    ties = spearmanr([0, 0, 0.03, 0.04, 0.05], mae).statistic  # 0.975; raw ranks give 0.9
    assert m.informative == 3 and m.spearman == pytest.approx(ties)
    assert spread_calibration(pd.DataFrame({"model": ["a"], "mae": [0.1]})) == []
    # a perfect model (mae 0): rounding noise is still not a spread
    (z,) = spread_calibration(pd.DataFrame({"model": "z", "mae": 0.0, "spread": [1e-8] * 5}))
    assert z.informative == 0 and "no spread to calibrate" in z.line()
    (c,) = spread_calibration(pd.DataFrame({"model": "c", "mae": 0.2, "spread": mae}))
    assert c.informative == 5 and np.isnan(c.spearman) and "nothing to rank" in c.line()
