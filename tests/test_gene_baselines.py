"""linear and knn with gene tables: unseen genes from their vectors, k by inner CV, saving."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbcast import InputError, get_model
from perturbcast.data import read_experiment
from perturbcast.models.base import PerturbationModel
from perturbcast.models.gene_baselines import KnnBaseline


def screen(vectors: np.ndarray, effect: np.ndarray, n_genes: int = 30, cells: int = 12,
           seed: int = 0) -> ad.AnnData:
    """log1p cells of 2 contexts: control, and perturbation P<i> = control + effect[i] + noise.

    vectors : (n_perts, d) the table's rows (unused here, kept beside the effects)
    effect : (n_perts, n_genes) true mean change of each perturbation
    """
    rng = np.random.default_rng(seed)
    base = {"c0": rng.uniform(1.5, 2.5, n_genes), "c1": rng.uniform(1.5, 2.5, n_genes)}
    rows, perts, ctxs = [], [], []
    for ctx, b in base.items():
        for i, lab in [(-1, "control")] * 3 + list(enumerate(f"P{i}" for i in range(len(effect)))):
            d = 0 if i < 0 else effect[i]
            rows.append(b + d + 0.02 * rng.standard_normal((cells, n_genes)))
            perts += [lab] * cells
            ctxs += [ctx] * cells
    obs = pd.DataFrame({"perturbation": perts, "context": ctxs})
    obs.index = [f"cell{i}" for i in range(len(obs))]
    x = np.clip(np.concatenate(rows), 0, None).astype(np.float32)
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


def write_table(path, names, vectors) -> str:
    df = pd.DataFrame(vectors, columns=[f"d{j}" for j in range(vectors.shape[1])])
    df.insert(0, "name", names)
    df.to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def linear_world(tmp_path_factory):
    """Effects linear in a 4-d gene vector; P0..P23 train, P24..P29 unseen but tabled."""
    rng = np.random.default_rng(1)
    vec = rng.standard_normal((30, 4))
    effect = vec @ (0.3 * rng.standard_normal((4, 30)))
    exp = read_experiment(screen(vec, effect), "perturbation", "control", context_key="context")
    table = write_table(tmp_path_factory.mktemp("t") / "genes.csv",
                        [f"p{i}" for i in range(30)], vec)  # lower case: matched anyway
    train = ~np.isin(exp.perturbations, [f"P{i}" for i in range(24, 30)])
    return exp, table, effect, train


def test_linear_predicts_unseen_tabled_genes_from_their_vectors(linear_world):
    exp, table, effect, train = linear_world
    with_table = get_model("linear", embeddings=table).fit(exp, train)
    with pytest.warns(UserWarning, match="24 of 24 training perturbations have no row"):
        with_train = get_model("linear", embeddings="train").fit(exp, train)
    assert with_table.embeddings_used == table
    unseen = [f"P{i}" for i in range(24, 30)]
    for i, p in zip(range(24, 30), unseen, strict=True):
        pred = with_table.delta(p, "c1") - with_table.context_delta("c1")
        truth = effect[i] - effect[:24].mean(0)
        assert np.corrcoef(pred, truth)[0, 1] > 0.95, p
        assert np.abs(pred - truth).max() < 0.1
    # "train" has no row for P24 (not a measured gene): it falls back, and says so
    d_train = with_train.delta("P24", "c1")
    np.testing.assert_allclose(d_train, with_train.context_delta("c1"))
    assert np.abs(d_train - with_table.delta("P24", "c1")).max() > 0.1
    with pytest.warns(UserWarning, match="1 of 1 perturbations have no row"):
        with_train.predict(exp, [("P24", "c1")], n_cells=2)
    with pytest.warns(UserWarning, match="1 of 2 perturbations have no row.*NOTINTABLE"):
        with_table.predict(exp, [("P24", "c1"), ("NOTINTABLE", "c1")], n_cells=2)


def test_knn_recovers_a_near_duplicate_gene(linear_world, tmp_path):
    exp, table, effect, train = linear_world
    rng = np.random.default_rng(2)
    # P24's vector is a near copy of P3's; its true effect is P3's
    vec = pd.read_csv(table).iloc[:, 1:].to_numpy()
    vec[24] = vec[3] + 1e-3 * rng.standard_normal(4)
    eff = effect.copy()
    eff[24] = eff[3]
    exp2 = read_experiment(screen(vec, eff), "perturbation", "control", context_key="context")
    t2 = write_table(tmp_path / "t2.csv", [f"P{i}" for i in range(30)], vec)
    m = get_model("knn", embeddings=t2, k=1).fit(exp2, train)
    pred = m.delta("P24", "c0") - m.context_delta("c0")
    np.testing.assert_allclose(pred, eff[3] - eff[:24].mean(0), atol=0.03)
    assert m.nn_pert[m.neighbours("P24")[0]] == "P3"
    # a combination's vector is the sum of its singles'
    np.testing.assert_allclose(m.vector_of("P1+P2"), m.vector_of("P1") + m.vector_of("P2"))


def test_choose_k_by_leave_one_out():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, 8))
    members = np.repeat(np.arange(5), 6)  # 5 tight clusters of 6: the 5 others are the best
    unit = centres[members] + 0.01 * rng.standard_normal((30, 8))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    resid = 3 * rng.standard_normal((5, 20))[members] + 0.3 * rng.standard_normal((30, 20))
    k, err = KnnBaseline.choose_k(unit, resid, [1, 3, 5, 10, 20, 50])
    assert k == 5 and np.isnan(err[-1]) and err[2] < err[1] < err[0] and err[2] < err[3]


def test_knn_k_is_chosen_without_the_test_fold(linear_world, tmp_path):
    exp, table, effect, train = linear_world
    m = get_model("knn", embeddings=table).fit(exp, train)
    assert m.k in (1, 3, 5, 10, 20) and np.isfinite(m.cv_error).sum() == 5
    poisoned = exp.adata.copy()
    # test cells get noise (in the log1p range, so the file is read the same way)
    poisoned.X[~train] = 4.0 * np.random.default_rng(0).random((int((~train).sum()),
                                                                  exp.n_genes))
    exp_p = read_experiment(poisoned, "perturbation", "control", context_key="context")
    m_p = get_model("knn", embeddings=table).fit(exp_p, train)
    assert m_p.k == m.k
    np.testing.assert_array_equal(m_p.cv_error, m.cv_error)


@pytest.mark.parametrize("name", ["linear", "knn"])
def test_gene_baselines_save_and_load_with_a_table(name, linear_world, tmp_path):
    exp, table, _, train = linear_world
    m = get_model(name, embeddings=table).fit(exp, train)
    conds = [("P25", "c0"), ("P26+P1", "c1")]
    before = m.predict(exp, conds, n_cells=5)
    m.save(tmp_path / "m")
    loaded = PerturbationModel.load(tmp_path / "m")
    assert loaded.embeddings_used == table and loaded.params == m.params
    np.testing.assert_array_equal(loaded.predict(exp, conds, n_cells=5).X, before.X)


def test_default_table_reaches_real_gene_names(tmp_path):
    rng = np.random.default_rng(3)
    genes = ["STAT1", "IRF1", "JAK2", "MARCH8", "CD274", "SPI1", "MYC", "KLF1"]
    effect = 0.3 * rng.standard_normal((len(genes), 30))
    a = screen(np.zeros((len(genes), 1)), effect)
    a.obs["perturbation"] = a.obs["perturbation"].map(
        lambda p: genes[int(p[1:])] if p.startswith("P") else p)
    exp = read_experiment(a, "perturbation", "control", context_key="context")
    for name in ("linear", "knn"):
        m = get_model(name).fit(exp, exp.perturbations != "MYC")
        assert m.embeddings_used == "default" and m.vector_of("MYC").shape == (125,)
        assert m.vector_of("MARCH8") is not None
    with pytest.raises(InputError, match="needs gene vectors"):
        get_model("linear", embeddings="none")
    with pytest.raises(InputError, match="must be >= 1"):
        get_model("knn", k=0)


def test_set_model_uses_the_default_table_and_saves_it_compactly(tmp_path):
    genes = ["STAT1", "IRF1", "JAK2", "MARCH8", "CD274", "SPI1"]
    a = screen(np.zeros((6, 1)), 0.3 * np.random.default_rng(4).standard_normal((6, 30)))
    a.obs["perturbation"] = a.obs["perturbation"].map(
        lambda p: genes[int(p[1:])] if p.startswith("P") else p)
    exp = read_experiment(a, "perturbation", "control", context_key="context")
    m = get_model("transition", max_steps=2, dim=16, depth=1, n_heads=2, set_size=8,
                  n_sets=2, n_latent=8).fit(exp, exp.perturbations != "SPI1")
    assert m.features.n_features == 125 and m.features.feature_row("MYC") is not None
    before = m.predict(exp, [("SPI1", "c0"), ("MYC+STAT1", "c1")], n_cells=4)  # unseen: table
    m.save(tmp_path / "m")
    with np.load(tmp_path / "m" / "state.npz") as z:  # former symbols' rows stored once
        assert len(z["pf_feature_vectors"]) < 25_000 < len(z["pf_feature_names"])
    loaded = PerturbationModel.load(tmp_path / "m")
    after = loaded.predict(exp, [("SPI1", "c0"), ("MYC+STAT1", "c1")], n_cells=4)
    np.testing.assert_array_equal(before.X, after.X)
