import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from perturbcast import InputError, read_experiment
from perturbcast.data import components, is_combo, map_targets
from perturbcast.data.preprocess import detect_scale, normalize_log1p


def test_counts_are_normalised_once(sim_adata, sim_exp):
    assert sim_exp.input_scale == "counts"
    x = sim_exp.rows(np.arange(20))
    np.testing.assert_allclose(np.expm1(x.astype(np.float64)).sum(1), 1e4, rtol=1e-4)
    assert list(sim_exp.genes) == list(sim_adata.var_names)
    # the user's AnnData is not modified
    assert detect_scale(sim_adata.X) == "counts"


def test_log1p_input_is_kept(sim_adata):
    a = sim_adata.copy()
    a.X = normalize_log1p(a.X, "counts")
    exp = read_experiment(a, "perturbation", "control")
    assert exp.input_scale == "log1p"
    np.testing.assert_array_equal(exp.rows(np.arange(5)), a.X[:5].toarray())


def test_labels_and_targets(sim_exp):
    assert components("A+B") == ("A", "B")
    assert components("A+control", control="control") == ("A",)
    assert components("control", control="control") == ()
    assert is_combo("A+B") and not is_combo("A")
    assert map_targets(["g1", "X"], ["G1", "g2"]) == {"g1": 0}
    combos = [p for p in sim_exp.perturbation_names() if "+" in p]
    assert len(combos) == 4
    tidx = sim_exp.target_index()
    assert set(tidx) == set(sim_exp.singles())  # simulated targets are measured genes
    assert all(sim_exp.genes[i] == t for t, i in tidx.items())


def test_conditions_and_group_means(sim_exp):
    conds = sim_exp.conditions()
    assert set(conds.context) == {"ctx0", "ctx1"}
    assert (conds.n_cells == 30).all() and len(conds) == 2 * 12
    keys, means = sim_exp.group_means(("perturbation", "context"))
    i = int(np.flatnonzero((keys.perturbation == "control") & (keys.context == "ctx1"))[0])
    idx = sim_exp.index_of("control", "ctx1")
    np.testing.assert_allclose(means[i], sim_exp.rows(idx).mean(0), rtol=1e-5, atol=1e-6)


def test_backed_reads_match_memory(tmp_path, sim_adata, sim_exp):
    path = tmp_path / "sim.h5ad"
    sim_adata.write_h5ad(path)
    backed = read_experiment(path, "perturbation", "control", context_key="context", backed=True)
    assert backed.adata.isbacked and backed.normalize_on_read
    idx = np.array([5, 1, 300, 2])
    np.testing.assert_allclose(backed.rows(idx), sim_exp.rows(idx), rtol=1e-6)
    k1, m1 = backed.group_means()
    k2, m2 = sim_exp.group_means()
    np.testing.assert_allclose(m1, m2, rtol=1e-5, atol=1e-6)


def test_hvg_keeps_targets(sim_adata):
    exp = read_experiment(sim_adata, "perturbation", "control", n_top_genes=20)
    assert exp.n_genes == 20
    assert set(exp.singles()) <= set(exp.genes)


def _bad(a, **kw):
    args = {"perturbation_key": "perturbation", "control": "control", **kw}
    with pytest.raises(InputError) as e:
        read_experiment(a, **args)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_column_lists_columns(sim_adata):
    msg = _bad(sim_adata, perturbation_key="perturbaton")
    assert "'perturbaton'" in msg and "Did you mean: 'perturbation'" in msg
    assert "context" in msg and "--perturbation-key" in msg
    assert "--context-key" in _bad(sim_adata, context_key="celltype")


def test_control_absent_suggests(sim_adata):
    msg = _bad(sim_adata, control="Control")
    assert "'Control'" in msg and "Did you mean: 'control'" in msg


def test_nan_inf_negative(sim_adata):
    a = sim_adata.copy()
    a.X = a.X.astype(np.float32).toarray()
    a.X[3, 2] = np.nan
    assert "NaN or Inf" in _bad(a) and "index 3" in _bad(a)
    a.X[3, 2] = -1.5
    assert "negative" in _bad(a)


def test_duplicates_and_nan_labels(sim_adata):
    a = sim_adata.copy()
    a.var_names = ["G0000"] + list(a.var_names[1:-1]) + ["G0000"]
    assert "var_names_make_unique" in _bad(a)
    b = sim_adata.copy()
    b.obs_names = ["c"] * b.n_obs
    assert "obs_names_make_unique" in _bad(b)
    c = sim_adata.copy()
    c.obs["perturbation"] = c.obs["perturbation"].astype(object)
    c.obs.iloc[0, c.obs.columns.get_loc("perturbation")] = np.nan
    assert "missing (NaN)" in _bad(c)


def test_small_groups_fail_or_drop(sim_adata):
    labels = sim_adata.obs.perturbation.astype(str).to_numpy()
    ctx = sim_adata.obs.context.astype(str).to_numpy()
    victim = sorted(set(labels) - {"control"})[0]
    idx = np.flatnonzero((labels == victim) & (ctx == "ctx0"))
    keep = np.ones(sim_adata.n_obs, bool)
    keep[idx[2:]] = False  # leave 2 cells of one group
    a = sim_adata[keep].copy()
    msg = _bad(a, context_key="context", min_cells=3)
    assert "fewer than 3 cells" in msg and f"{victim} (ctx0): 2" in msg
    assert "--drop-small-groups" in msg
    exp = read_experiment(a, "perturbation", "control", context_key="context", min_cells=3,
                          drop_small_groups=True)
    assert exp.conditions().n_cells.min() >= 3
    assert exp.n_cells == a.n_obs - 2


def test_layer_and_file_errors(tmp_path, sim_adata):
    assert "layer 'raw' not found" in _bad(sim_adata, layer="raw")
    assert "file not found" in _bad(tmp_path / "nope.h5ad")
    junk = tmp_path / "junk.h5ad"
    junk.write_text("not hdf5")
    assert "could not read" in _bad(junk)


def test_exclude_labels(sim_adata):
    a = sim_adata.copy()
    lab = a.obs.perturbation.astype(str).to_numpy().copy()
    lab[:5] = "unassigned"
    a.obs["perturbation"] = pd.Categorical(lab)
    exp = read_experiment(a, "perturbation", "control", exclude=["unassigned"], min_cells=1)
    assert "unassigned" not in exp.perturbation_names()
    assert exp.n_cells == a.n_obs - 5


def test_normalize_sparse_and_dense_agree():
    rng = np.random.default_rng(0)
    x = rng.poisson(2.0, (10, 7)).astype(np.float32)
    a = normalize_log1p(x, "counts")
    b = normalize_log1p(sp.csr_matrix(x), "counts").toarray()
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert detect_scale(a) == "log1p" and detect_scale(x) == "counts"
    assert detect_scale(np.expm1(a) * 10) == "normalized"


def test_anndata_with_extra_context(sim_adata):
    a = ad.AnnData(X=sim_adata.X, obs=sim_adata.obs.copy(), var=sim_adata.var)
    exp = read_experiment(a, "perturbation", "control", context_key="context")
    assert exp.context_names() == ["ctx0", "ctx1"]


def test_unassigned_cells_are_announced_unless_excluded():
    """Guide-calling leftovers ('unassigned') were trained on as a perturbation silently."""
    import warnings

    from perturbcast.datasets import simulate

    a = simulate(n_genes=30, n_singles=4, n_combos=0, n_contexts=1, cells_per_condition=8,
                 control_cells=20, seed=1)
    a.obs["perturbation"] = a.obs.perturbation.astype(str)
    a.obs.iloc[:5, a.obs.columns.get_loc("perturbation")] = "unassigned"
    with pytest.warns(UserWarning, match="5 cells are labelled unassigned, read as a "
                                         "perturbation"):
        read_experiment(a, "perturbation", "control")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exp = read_experiment(a, "perturbation", "control", exclude=["unassigned"])
    assert "unassigned" not in set(exp.perturbations)
