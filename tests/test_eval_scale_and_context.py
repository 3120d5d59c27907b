"""evaluate puts predictions and real cells on one scale, scores per context, and its options
fail with one line."""

import json

import anndata as ad
import numpy as np
import pytest
from _bad_input_common import _cli as _run

from perturbcast import InputError, evaluate, get_model, make_split, read_experiment, simulate
from perturbcast.eval import Reference


@pytest.fixture(scope="module")
def case():
    """Raw-count screen (1 context), a cell_mean model and its predictions for fold 0."""
    a = simulate(n_genes=60, n_singles=6, n_combos=0, n_contexts=1, cells_per_condition=25,
                 control_cells=60, seed=5)
    del a.uns["true_effects"]
    exp = read_experiment(a, "perturbation", "control")
    fold = make_split(exp, "unseen-perturbation", n_folds=2, seed=0).folds[0]
    model = get_model("cell_mean").fit(exp, fold.train_mask(exp))
    pred = model.predict(exp, fold.test, n_cells=30, include_controls=True)
    keep = fold.test_mask(exp) | exp.is_control
    return a[keep].copy(), exp.subset(keep).adata, pred, model



def test_raw_or_normalised_real_file_gives_the_same_scores(case):
    raw, normalised, pred, _ = case
    assert pred.uns["perturbcast"]["normalization"]["target_sum"] == 1e4
    from_raw = evaluate(pred, raw, "perturbation", "control")
    from_norm = evaluate(pred, normalised, "perturbation", "control")
    for m, v in from_norm.summary.items():
        assert from_raw.summary[m] == pytest.approx(v, abs=1e-6, nan_ok=True), m
    # without the record (a file cell-eval would read) counts keep cell-eval's median rule
    bare = ad.AnnData(X=pred.X, obs=pred.obs[["perturbation"]], var=pred.var)
    assert evaluate(bare, raw, "perturbation", "control").summary["mae"] != pytest.approx(
        from_raw.summary["mae"], abs=1e-3)


def test_mismatched_scales_are_refused(case):
    raw, _, pred, _ = case
    ref = Reference(raw, "perturbation", "control")  # median library size, no target_sum
    with pytest.raises(InputError, match="median library size"):
        evaluate(pred, ref)
    assert Reference(raw, "perturbation", "control", target_sum=1e4).target_sum == 1e4
    log1p_input = pred.copy()
    log1p_input.uns["perturbcast"]["normalization"]["target_sum"] = float("nan")
    with pytest.raises(InputError, match="unknown total"):
        evaluate(log1p_input, raw, "perturbation", "control")


def test_cli_predict_then_evaluate_on_raw_counts(case, tmp_path, capsys):
    raw, normalised, _, model = case
    model.save(tmp_path / "m")
    full = tmp_path / "data.h5ad"
    raw.write_h5ad(full)
    normalised.write_h5ad(tmp_path / "norm.h5ad")
    assert _run(["predict", "--model", str(tmp_path / "m"), "--data", str(full),
                 "--perturbations", ",".join(sorted(set(raw.obs.perturbation) - {"control"})),
                 "--n-cells", "30", "--include-controls", "--out", str(tmp_path / "p.h5ad")],
                capsys)[0] == 0
    out = {}
    for name in ("data", "norm"):
        code, err = _run(["evaluate", "--pred", str(tmp_path / "p.h5ad"), "--real",
                          str(tmp_path / f"{name}.h5ad"), "--perturbation-key", "perturbation",
                          "--control", "control", "--out", str(tmp_path / name)], capsys)
        assert code == 0, err
        out[name] = json.loads((tmp_path / name / "summary.json").read_text())
    for m, v in out["norm"].items():
        assert out["data"][m] == pytest.approx(v, abs=1e-6, nan_ok=True), m


def test_evaluate_bad_inputs_exit_2(case, tmp_path, capsys):
    raw, _, pred, _ = case
    pred.write_h5ad(tmp_path / "p.h5ad")
    raw.write_h5ad(tmp_path / "r.h5ad")
    (tmp_path / "bad.h5ad").write_bytes(b"not an h5ad at all")
    base = ["evaluate", "--perturbation-key", "perturbation", "--control", "control",
            "--out", str(tmp_path / "e")]
    cases = [(["--pred", str(tmp_path / "p.h5ad"), "--real", str(tmp_path / "r.h5ad"),
               "--fdr", "bogus"], "--fdr 'bogus'"),
             (["--pred", str(tmp_path / "bad.h5ad"), "--real", str(tmp_path / "r.h5ad")],
              "could not read"),
             (["--pred", str(tmp_path / "p.h5ad"), "--real", str(tmp_path / "nope.h5ad")],
              "file not found"),
             (["--pred", str(tmp_path / "p.h5ad"), "--real", str(tmp_path / "r.h5ad"),
               "--context-key", "cell_line"], "context column 'cell_line'")]
    for extra, msg in cases:
        code, err = _run(base + extra, capsys)
        assert code == 2 and msg in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "e").exists()


def test_python_evaluate_takes_epsilon(case):
    raw, _, pred, _ = case
    plain = evaluate(pred, raw, "perturbation", "control")
    eps = evaluate(pred, raw, "perturbation", "control", epsilon=0.5)
    assert not np.allclose(plain.de_real.log2_fold_change, eps.de_real.log2_fold_change)
    ref = Reference(raw, "perturbation", "control", epsilon=0.5, target_sum=1e4)
    np.testing.assert_array_equal(ref.de.log2_fold_change, eps.de_real.log2_fold_change)


def test_scores_per_perturbation_and_context(sim_adata, sim_exp):
    fold = make_split(sim_exp, "unseen-perturbation", n_folds=3, seed=0).folds[0]
    model = get_model("perturbation_mean").fit(sim_exp, fold.train_mask(sim_exp))
    pred = model.predict(sim_exp, fold.test, n_cells=30, include_controls=True)
    real = sim_exp.subset(fold.test_mask(sim_exp) | sim_exp.is_control).adata
    res = evaluate(pred, real, "perturbation", "control")
    table = res.per_perturbation
    assert list(table.columns[:1]) == ["context"] and set(table.context) == {"ctx0", "ctx1"}
    assert len(table) == len(fold.test)
    assert res.summary["mae"] == pytest.approx(table["mae"].mean())
    for ctx in ("ctx0", "ctx1"):
        alone = evaluate(pred[pred.obs.context == ctx], real[real.obs.context == ctx],
                         "perturbation", "control", context_key="context")
        assert res.by_context[ctx].summary["mae"] == pytest.approx(alone.summary["mae"])
        one = Reference(real[real.obs.context == ctx], "perturbation", "control")
        pooled_one = evaluate(pred[pred.obs.context == ctx], one)
        assert pooled_one.summary["mae"] == pytest.approx(alone.summary["mae"])
    # pooling the two contexts (the old behaviour) scores something else
    pooled = evaluate(ad.AnnData(pred.X, obs=pred.obs[["perturbation"]], var=pred.var,
                                 uns=pred.uns),
                      ad.AnnData(real.X, obs=real.obs[["perturbation"]], var=real.var),
                      "perturbation", "control")
    assert len(pooled.per_perturbation) < len(table)


def test_references_are_built_once_and_give_the_same_scores(sim_exp, monkeypatch):
    """A ReferenceCache kept between two predictions builds each context's real side once
    (``evaluate --baseline`` scores two predictions against one real file), with the scores of
    evaluating each prediction on its own; another setting builds anew; another real object is
    refused."""
    import sys

    import perturbcast.eval.by_context as by_context
    from perturbcast.eval import ReferenceCache

    ev = sys.modules["perturbcast.eval.evaluate"]  # the package's `evaluate` is the function
    fold = make_split(sim_exp, "unseen-perturbation", n_folds=3, seed=0).folds[0]
    real = sim_exp.subset(fold.test_mask(sim_exp) | sim_exp.is_control).adata
    preds = [get_model(m).fit(sim_exp, fold.train_mask(sim_exp)).predict(
        sim_exp, fold.test, n_cells=30, include_controls=True)
        for m in ("perturbation_mean", "cell_mean")]
    alone = [evaluate(p, real, "perturbation", "control") for p in preds]
    built = []

    class Counting(ev.Reference):
        def __post_init__(self):
            built.append(1)
            super().__post_init__()

    monkeypatch.setattr(by_context, "Reference", Counting)
    monkeypatch.setattr(ev, "Reference", Counting)
    refs = ReferenceCache()
    shared = [evaluate(p, real, "perturbation", "control", references=refs) for p in preds]
    assert len(built) == 2 and len(refs) == 2  # two contexts, built for the first pred only
    for a, b in zip(alone, shared, strict=True):
        assert a.summary == pytest.approx(b.summary, nan_ok=True)
    evaluate(preds[0], real, "perturbation", "control", references=refs, epsilon=0.5)
    assert len(built) == 4 and len(refs) == 4  # another setting: its own references
    with pytest.raises(ValueError, match="another real AnnData"):
        evaluate(preds[0], real.copy(), "perturbation", "control", references=refs)
    pooled = [ad.AnnData(p.X, obs=p.obs[["perturbation"]], var=p.var, uns=p.uns) for p in preds]
    flat = ad.AnnData(real.X, obs=real.obs[["perturbation"]], var=real.var)
    refs, built[:] = ReferenceCache(), []
    for p in pooled:
        evaluate(p, flat, "perturbation", "control", references=refs)
    assert len(built) == 1 and len(refs) == 1


def test_evaluate_one_predicted_context_against_a_whole_file_or_store(sim_adata, sim_exp,
                                                                      tmp_path, capsys):
    """A held-out context predicted alone is scored against the full real file (the other
    context is left out, with a warning) and against a store of it, alike."""
    from perturbcast.data.convert import convert

    fold = make_split(sim_exp, "unseen-context", n_folds=2, seed=0).folds[0]
    ctx = sorted({c for _, c in fold.test})
    assert len(ctx) == 1
    model = get_model("perturbation_mean").fit(sim_exp, fold.train_mask(sim_exp))
    real = sim_exp.adata
    conds = sorted({(p, c) for p, c in zip(real.obs.perturbation, real.obs.context,
                                            strict=True) if c == ctx[0] and p != "control"})
    pred = model.predict(sim_exp, conds, n_cells=30, include_controls=True)
    with pytest.warns(UserWarning, match="have no predictions: scoring the 1 predicted"):
        whole = evaluate(pred, sim_exp.adata, "perturbation", "control")
    alone = evaluate(pred, real[real.obs.context == ctx[0]], "perturbation", "control",
                     context_key="context")
    assert whole.summary["mae"] == pytest.approx(alone.summary["mae"])
    assert set(whole.per_perturbation.context) == set(ctx)
    sim_adata.write_h5ad(tmp_path / "sim.h5ad")
    convert([tmp_path / "sim.h5ad"], tmp_path / "st", "perturbation", "control",
            context_key="context")
    pred.write_h5ad(tmp_path / "pred.h5ad")
    for real_arg, out in ((tmp_path / "st", "ev_store"), (tmp_path / "sim.h5ad", "ev_file")):
        code, _ = _run(["evaluate", "--pred", str(tmp_path / "pred.h5ad"), "--real",
                        str(real_arg), "--perturbation-key", "perturbation", "--control",
                        "control", "--out", str(tmp_path / out)], capsys)
        assert code == 0
    from perturbcast.cli_options import _read_real

    read = _read_real(tmp_path / "st", pred, "perturbation", "control", None)
    obs = sim_adata.obs
    want = obs.index[(obs.context == ctx[0]).to_numpy() &
                     obs.perturbation.isin([p for p, _ in conds] + ["control"]).to_numpy()]
    assert sorted(read.obs_names) == sorted(want)  # only the predicted context's cells
    normalised = sim_exp.adata[read.obs_names]  # the store holds log1p(1e4) like the exp
    np.testing.assert_allclose(read.X.toarray(), np.asarray(normalised.X.todense() if hasattr(
        normalised.X, "todense") else normalised.X), atol=1e-5)
    store_scores = json.loads((tmp_path / "ev_store" / "summary.json").read_text())
    file_scores = json.loads((tmp_path / "ev_file" / "summary.json").read_text())
    for m, v in file_scores.items():
        assert store_scores[m] == pytest.approx(v, abs=1e-5, nan_ok=True), m
