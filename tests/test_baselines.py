import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import perturbcast as pc
from perturbcast import InputError, get_model, make_split
from perturbcast.data import read_experiment
from perturbcast.eval import evaluate
from perturbcast.models import BASELINES, MODELS
from perturbcast.models.base import PerturbationModel


def toy_experiment():
    """Noise-free log1p data: 2 contexts, known deltas; gene names equal target names."""
    genes = ["A", "B", "C", "D"]
    ctrl = {"c0": np.array([1.0, 1.0, 1.0, 1.0]), "c1": np.array([2.0, 2.0, 2.0, 2.0])}
    delta = {"A": np.array([-0.5, 0.2, 0.0, 0.0]), "B": np.array([0.0, -0.5, 0.3, 0.0])}
    rows, labels, ctxs = [], [], []
    for c, base in ctrl.items():
        for lab, d in [("ctl", 0 * base), ("A", delta["A"]), ("B", delta["B"]),
                       ("A+B", delta["A"] + delta["B"] + np.array([0, 0, 0, 0.4]))]:
            if c == "c1" and lab == "B":
                continue
            for _ in range(4):
                rows.append(base + d)
                labels.append(lab)
                ctxs.append(c)
    obs = pd.DataFrame({"pert": labels, "ctx": ctxs}, index=[f"c{i}" for i in range(len(rows))])
    a = ad.AnnData(X=np.array(rows, dtype=np.float32) + 0.001 * np.arange(len(rows))[:, None] %
                   0.003, obs=obs, var=pd.DataFrame(index=genes))
    return read_experiment(a, "pert", "ctl", context_key="ctx"), delta, ctrl


def test_baseline_semantics():
    exp, delta, ctrl = toy_experiment()
    train = ~((exp.perturbations == "A+B") & (exp.contexts == "c1"))
    conds = [("A+B", "c1"), ("B", "c1")]
    preds = {}
    for name in BASELINES:
        m = get_model(name).fit(exp, train)
        p = m.predict(exp, conds, n_cells=3)
        assert p.shape == (6, 4) and list(p.var_names) == ["A", "B", "C", "D"]
        assert (p.X >= 0).all() and p.X.dtype == np.float32
        assert list(p.obs["pert"]) == ["A+B"] * 3 + ["B"] * 3
        preds[name] = {lab: p.X[p.obs["pert"] == lab].mean(0) for lab in ("A+B", "B")}
    tol = dict(atol=0.01)
    np.testing.assert_allclose(preds["control"]["B"], ctrl["c1"], **tol)
    # additive: ctrl + delta_A (same context) + delta_B (other context; unseen in c1)
    np.testing.assert_allclose(preds["additive"]["A+B"], ctrl["c1"] + delta["A"] + delta["B"],
                               **tol)
    # perturbation_mean: B's delta in other contexts; A+B's delta in c0 (incl. its interaction)
    np.testing.assert_allclose(preds["perturbation_mean"]["B"], ctrl["c1"] + delta["B"], **tol)
    np.testing.assert_allclose(preds["perturbation_mean"]["A+B"],
                               ctrl["c1"] + delta["A"] + delta["B"] + [0, 0, 0, 0.4], **tol)
    # context_mean: mean delta of c1's training perturbations (only A)
    np.testing.assert_allclose(preds["context_mean"]["B"], ctrl["c1"] + delta["A"], **tol)
    # cell_mean: mean of c1's training perturbed cells, identical rows
    np.testing.assert_allclose(preds["cell_mean"]["B"], ctrl["c1"] + delta["A"], **tol)


def test_linear_baseline_matches_closed_form(sim_exp):
    split = make_split(sim_exp, "unseen-perturbation", n_folds=3, seed=0)
    fold = split.folds[0]
    m = get_model("linear", n_components=3).fit(sim_exp, fold.train_mask(sim_exp))
    # recompute the ridge solution independently
    ctx_mean = np.stack([m.context_delta(c) for c in m.cond_ctx])
    y = (m.cond_delta - ctx_mean).T
    u, s, _ = np.linalg.svd(y - y.mean(1, keepdims=True), full_matrices=False)
    g = u[:, :3] * s[:3]
    np.testing.assert_allclose(np.abs(m.gene_emb), np.abs(g), atol=1e-8)
    gidx = {gn: i for i, gn in enumerate(sim_exp.genes)}
    p = np.array([[1.0, *sum(g[gidx[s_]] for s_ in lab.split("+"))] for lab in m.cond_pert])
    w = np.linalg.solve(g.T @ g + 0.1 * np.eye(3), g.T @ y) @ p @ np.linalg.inv(
        p.T @ p + 0.1 * np.eye(4))
    test_p, ctx = fold.test[0]
    emb = sum(g[gidx[s_]] for s_ in test_p.split("+"))
    expected = m.context_delta(ctx) + g @ (w @ np.r_[1.0, emb])
    np.testing.assert_allclose(m.delta(test_p, ctx), expected, atol=1e-8)


def test_additive_beats_control_on_combos(sim_exp):
    split = make_split(sim_exp, "combo", n_folds=2, seed=0)
    fold = split.folds[0]
    test = fold.test_mask(sim_exp)
    real = sim_exp.subset(test | (sim_exp.is_control)).adata
    real.obs["pert"] = real.obs["perturbation"].astype(str)
    scores = {}
    for name in ("control", "additive"):
        m = get_model(name).fit(sim_exp, fold.train_mask(sim_exp))
        c = sim_exp.conditions()
        c = c[[(p, x) in set(fold.test) for p, x in zip(c.perturbation, c.context, strict=True)]]
        c = c[c.context == "ctx0"]
        pred = m.predict(sim_exp, c, include_controls=True)
        r = real[real.obs.context == "ctx0"]
        scores[name] = evaluate(pred, r, "perturbation", "control").summary
    assert scores["additive"]["pearson_delta"] > scores["control"]["pearson_delta"] + 0.3
    assert scores["additive"]["mse_delta"] < scores["control"]["mse_delta"]


@pytest.mark.parametrize("name", list(MODELS))
def test_save_load_roundtrip(name, sim_exp, tmp_path):
    split = make_split(sim_exp, "unseen-perturbation", n_folds=2, seed=0)
    small_set = dict(max_epochs=None, max_steps=20, min_steps=1, dim=16, depth=1, n_heads=2,
                     set_size=16, n_sets=4)  # save/load is under test here, not quality
    params = {"incontext": dict(pretrain_steps=3, finetune_steps=3), "flow": small_set,
              "transition": small_set}.get(name, {})
    m = get_model(name, seed=3, **params).fit(sim_exp, split.folds[0].train_mask(sim_exp))
    conds = split.folds[0].test[:3]
    # incontext sees a perturbation it never trained on only through prompt cells
    extra = {"prompt": sim_exp} if name == "incontext" else {}
    before = m.predict(sim_exp, conds, n_cells=7, **extra)
    m.save(tmp_path / "model")
    loaded = PerturbationModel.load(tmp_path / "model")
    assert type(loaded) is type(m) and loaded.vocabulary == m.vocabulary
    assert type(pc.load_model(tmp_path / "model")) is type(m)  # the top-level name
    assert list(loaded.genes) == list(sim_exp.genes) and loaded.keys["control"] == "control"
    after = loaded.predict(sim_exp, conds, n_cells=7, **extra)
    np.testing.assert_array_equal(before.X, after.X)


def test_predict_errors(sim_exp, sim_adata):
    m = get_model("additive").fit(sim_exp)
    with warnings.catch_warnings():  # no "predicting there from their control cells" first
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="no control cells for context 'ctx9' in the "
                                             "input. Did you mean: 'ctx"):
            m.predict(sim_exp, [("G0001", "ctx9")])
    fewer = read_experiment(sim_adata[:, :40].copy(), "perturbation", "control",
                            context_key="context")
    with pytest.raises(InputError, match="genes are missing"):
        m.predict(fewer, [("G0001", "ctx0")])
    with pytest.raises(InputError, match="not fitted"):
        get_model("linear").predict(sim_exp, [("G0001", "ctx0")])
    with pytest.raises(InputError, match="unknown model"):
        get_model("nope")
    with pytest.raises(InputError, match="not a saved perturbcast model"):
        PerturbationModel.load(".")


def test_predicted_cells_are_non_negative_with_the_intended_mean():
    """Controls with many zeros shifted down: clipping alone would raise the predicted mean
    (the change toward 0); the cells stay >= 0 and keep mean max(controls + delta, 0)."""
    from perturbcast.models.base import clip_keep_mean

    rng = np.random.default_rng(0)
    ctrl = np.where(rng.random((400, 6)) < 0.6, 0.0, rng.gamma(2.0, 1.0, (400, 6)))
    delta = np.array([-0.3, -0.1, 0.0, 0.4, -5.0, -0.6])
    shifted = ctrl + delta
    out = clip_keep_mean(shifted)
    assert (out >= 0).all()
    np.testing.assert_allclose(out.mean(0), np.maximum(shifted.mean(0), 0), atol=1e-12)
    naive = np.clip(shifted, 0, None).mean(0)
    assert (naive[[0, 1, 5]] > out.mean(0)[[0, 1, 5]] + 0.05).all()  # what plain clipping did
    np.testing.assert_array_equal(out[:, 3], shifted[:, 3])  # nothing below 0: unchanged
    assert (out[:, 4] == 0).all()  # the mean itself below 0: all zero
    assert (out[ctrl[:, 0] == 0, 0] == 0).all()  # zeros stay zeros
    # a shift baseline's predictions carry it: their mean change is its delta
    a = ad.AnnData(X=np.vstack([ctrl, np.clip(ctrl + delta, 0, None)]).astype(
        np.float32), obs=pd.DataFrame({"p": ["ctl"] * 400 + ["X"] * 400, "c": "k"},
                                       index=[f"c{i}" for i in range(800)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(6)]))
    exp = read_experiment(a, "p", "ctl", context_key="c", input_scale="log1p")
    model = get_model("context_mean").fit(exp)
    pred = model.predict(exp, [("X", "k")], n_cells=400)
    x = np.asarray(pred.X)
    d = model.delta("X", "k")
    pool_mean = exp.rows(np.flatnonzero(exp.is_control)).mean(0)
    assert (x >= 0).all()
    np.testing.assert_allclose(x.mean(0), np.maximum(pool_mean + d, 0), atol=1e-5)  # all 400


def test_drawn_controls_carry_the_context_mean(sim_exp):
    """A few drawn controls: their mean is moved to the context's control mean, so a shift
    baseline's predicted mean change is its delta, not the draw's noise (before clipping)."""
    import perturbcast.models.base as base_module

    model = get_model("context_mean").fit(sim_exp)
    ctx = "ctx0"
    pool = np.flatnonzero(sim_exp.is_control & (sim_exp.contexts == ctx))
    full = sim_exp.rows(pool).mean(0)
    pert = next(p for p in sim_exp.perturbation_names() if "+" not in p)
    seen = {}
    real = model._predict_cells

    def spy(x_ctrl, *args, **kwargs):
        seen["mean"] = x_ctrl.mean(0)
        return real(x_ctrl, *args, **kwargs)

    model._predict_cells = spy
    model.predict(sim_exp, [(pert, ctx)], n_cells=7)
    np.testing.assert_allclose(seen["mean"], full, atol=1e-4)
    base_module.MATCH_CONTROL_MEAN = False
    try:
        model.predict(sim_exp, [(pert, ctx)], n_cells=7)
    finally:
        base_module.MATCH_CONTROL_MEAN = True
    assert np.abs(seen["mean"] - full).max() > 0.05  # 7 raw draws: off by sampling noise


def test_context_control_mean_is_read_once_per_experiment(sim_adata):
    """atlas predicts in batches: the context's whole control pool is read for its mean once
    per experiment, not once per predict call (a store re-reads from disk)."""
    from perturbcast.data import read_experiment

    exp = read_experiment(sim_adata, "perturbation", "control", context_key="context")
    model = get_model("context_mean").fit(exp)
    pert = next(p for p in exp.perturbation_names() if "+" not in p)
    pool = np.flatnonzero(exp.is_control & (exp.contexts == "ctx0"))
    reads = []
    rows = exp.rows
    exp.rows = lambda idx: reads.append(np.size(idx)) or rows(idx)
    first = model.predict(exp, [(pert, "ctx0")], n_cells=7)
    assert pool.size in reads
    reads.clear()
    again = model.predict(exp, [(pert, "ctx0")], n_cells=7)
    assert reads == [7]  # only the drawn controls
    np.testing.assert_array_equal(np.asarray(first.X), np.asarray(again.X))
