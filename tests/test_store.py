import json

import numpy as np
import pandas as pd
import pytest

from perturbcast import InputError, read_experiment
from perturbcast.cli import main
from perturbcast.data.convert import convert
from perturbcast.data.store import is_store
from perturbcast.models import BASELINES, get_model

KEYS = dict(context_key="context", batch_key="batch")


@pytest.fixture(scope="module")
def store(tmp_path_factory, sim_adata):
    d = tmp_path_factory.mktemp("store")
    sim_adata.write_h5ad(d / "sim.h5ad")
    return convert([d / "sim.h5ad"], d / "st", "perturbation", "control", chunk_size=97, **KEYS)


def _reference(adata, store_exp):
    """The in-memory experiment of the same cells, in the store's order."""
    rows = store_exp.adata.obs["source_row"].to_numpy()
    return read_experiment(adata[rows].copy(), "perturbation", "control", **KEYS)


def test_store_rows_groups_and_record(store, sim_adata):
    exp = read_experiment(store, "perturbation", "control", **KEYS)
    assert exp.matrix is not None and exp.input_scale == "log1p"
    ref = _reference(sim_adata, exp)
    idx = np.array([7, 0, 500, 3, 4, 879])
    np.testing.assert_allclose(exp.rows(idx), ref.rows(idx), rtol=1e-6)
    np.testing.assert_allclose(np.expm1(exp.rows(np.arange(10)).astype(float)).sum(1), 1e4,
                               rtol=1e-4)  # counts were normalised to 1e4 + log1p
    groups = pd.read_csv(store / "groups.csv", keep_default_na=False)
    assert groups.start.iloc[0] == 0 and (groups.start.to_numpy()[1:] ==
                                          groups.stop.to_numpy()[:-1]).all()
    for g in groups.itertuples():  # each group's cells are contiguous
        assert set(exp.perturbations[g.start:g.stop]) == {g.perturbation}
        assert set(exp.contexts[g.start:g.stop]) == {g.context}
        assert set(exp.batches[g.start:g.stop]) == {g.batch}
    info = json.loads((store / "store.json").read_text())
    assert info["normalization"]["target_sum"] == 1e4
    assert info["sources"][0]["input_scale"] == "counts"
    assert info["genes"] == list(sim_adata.var_names)
    k1, m1 = exp.group_means(("perturbation", "context", "batch"))
    k2, m2 = ref.group_means(("perturbation", "context", "batch"))
    pd.testing.assert_frame_equal(k1, k2)
    np.testing.assert_allclose(m1, m2, rtol=1e-5, atol=1e-6)
    top = read_experiment(store, "perturbation", "control", n_top_genes=20, **KEYS)
    top_ref = read_experiment(ref.adata, "perturbation", "control", n_top_genes=20, **KEYS)
    assert list(top.genes) == list(top_ref.genes)
    np.testing.assert_allclose(top.rows(idx), top_ref.rows(idx), rtol=1e-6)
    mask = top.contexts == "ctx1"  # a gene subset (store columns) and a mask: sparse chunks
    k1, m1 = top.group_means(("perturbation",), mask)
    k2, m2 = top_ref.group_means(("perturbation",), mask)
    pd.testing.assert_frame_equal(k1, k2)
    np.testing.assert_allclose(m1, m2, rtol=1e-5, atol=1e-6)
    sub = exp.subset(exp.contexts == "ctx1")
    np.testing.assert_allclose(sub.rows(np.arange(5)),
                               exp.rows(np.flatnonzero(exp.contexts == "ctx1")[:5]))


def test_join_outer_records_missing_genes_inner_intersects(tmp_path, sim_adata):
    a, b = sim_adata[:400, :60].copy(), sim_adata[400:, 20:].copy()
    a.write_h5ad(tmp_path / "a.h5ad")
    b.write_h5ad(tmp_path / "b.h5ad")
    files = [tmp_path / "a.h5ad", tmp_path / "b.h5ad"]
    with pytest.warns(UserWarning, match="absent from"):
        out = convert(files, tmp_path / "outer", "perturbation", "control", join="outer")
    info = json.loads((out / "store.json").read_text())
    genes = list(sim_adata.var_names)
    assert info["genes"] == genes
    assert info["sources"][0]["missing_genes"] == sorted(genes[60:])
    assert info["sources"][1]["missing_genes"] == sorted(genes[:20])
    inner = convert(files, tmp_path / "inner", "perturbation", "control", join="inner")
    exp = read_experiment(inner, "perturbation", "control")
    assert list(exp.genes) == genes[20:60]
    src = exp.adata.obs[["source", "source_row"]].to_numpy()
    first = np.flatnonzero(src[:, 0] == 1)[0]
    row = b[int(src[first, 1])]
    expect = np.log1p(row.X.toarray()[0] * 1e4 / row.X.sum())[:40]  # normalised over b's genes
    np.testing.assert_allclose(exp.rows([first])[0], expect, rtol=1e-5)


def test_convert_is_atomic_and_cli(tmp_path, sim_adata, capsys):
    sim_adata.write_h5ad(tmp_path / "sim.h5ad")
    with pytest.raises(InputError, match="perturbaton"):
        convert([tmp_path / "sim.h5ad"], tmp_path / "bad", "perturbaton", "control")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad*"))
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(tmp_path / "sim.h5ad"), "--perturbation-key", "perturbation",
              "--control", "ctrl", "--out", str(tmp_path / "bad")])
    assert exc.value.code == 2 and not (tmp_path / "bad").exists()
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(tmp_path / "sim.h5ad"), "--perturbation-key", "perturbation",
              "--control", "control", "--context-key", "context", "--out",
              str(tmp_path / "st")])
    assert exc.value.code == 0 and is_store(tmp_path / "st")


def test_every_baseline_predicts_the_same_from_store(store, sim_adata):
    exp = read_experiment(store, "perturbation", "control", **KEYS)
    ref = _reference(sim_adata, exp)
    mask = ~np.isin(exp.perturbations, ["G0013", "G0017+G0022"])
    conds = [("G0013", "ctx0"), ("G0017+G0022", "ctx1")]
    for name in BASELINES:
        a = get_model(name).fit(exp, mask).predict(exp, conds, n_cells=20)
        b = get_model(name).fit(ref, mask).predict(ref, conds, n_cells=20)
        np.testing.assert_allclose(a.X, b.X, rtol=1e-4, atol=1e-5, err_msg=name)


def test_set_model_streams_from_store_with_same_predictions(store, sim_adata):
    exp = read_experiment(store, "perturbation", "control", **KEYS)
    ref = _reference(sim_adata, exp)
    # the default fall-back (base choice, probes) on the row-streaming path
    params = dict(max_steps=6, set_size=16, n_sets=4, dim=32, depth=1, n_heads=2, n_latent=8)
    with pytest.warns(UserWarning, match="streamed"):  # the row path, forced on a store
        streamed = get_model("transition", memory_budget_gb=0.0, sampler="rows",
                             **params).fit(exp)
    dense = get_model("transition", **params).fit(ref)
    assert streamed.training_summary["data_mode"] == "streamed"
    assert dense.training_summary["data_mode"] == "dense"
    conds = [("G0013", "ctx0")]
    a = streamed.predict(exp, conds, n_cells=20).X
    b = dense.predict(ref, conds, n_cells=20).X
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3)


def test_cli_train_and_predict_from_store(store, tmp_path):
    base = ["--data", str(store), "--perturbation-key", "perturbation", "--control", "control",
            "--context-key", "context", "--batch-key", "batch"]
    with pytest.raises(SystemExit) as exc:
        main(["train", *base, "--model", "linear", "--devices", "2", "--out",
              str(tmp_path / "bad")])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["train", *base, "--model", "transition", "--devices", "1", "--precision", "32",
              "--strategy", "auto", "--param", "max_steps=2", "--param", "dim=16",
              "--param", "depth=1", "--param", "n_heads=2", "--param", "base=none",
              "--param", "shrink=1", "--out", str(tmp_path / "m")])
    assert exc.value.code == 0
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--model", str(tmp_path / "m"), "--data", str(store),
              "--perturbations", "G0013", "--n-cells", "5", "--out", str(tmp_path / "p.h5ad")])
    assert exc.value.code == 0 and (tmp_path / "p.h5ad").exists()


def test_convert_dense_log1p_input_kept_as_is(tmp_path, sim_adata):
    a = sim_adata[:200].copy()
    a.X = np.log1p(a.X.toarray() / 3.0).astype(np.float32)  # dense, fractional, < 15: log1p
    a.write_h5ad(tmp_path / "dense.h5ad")
    out = convert([tmp_path / "dense.h5ad"], tmp_path / "st", "perturbation", "control",
                  chunk_size=64)
    assert json.loads((out / "store.json").read_text())["sources"][0]["input_scale"] == "log1p"
    exp = read_experiment(out, "perturbation", "control", min_cells=1)
    rows = exp.adata.obs["source_row"].to_numpy()
    np.testing.assert_allclose(exp.rows(np.arange(200)), a.X[rows], rtol=1e-6)
