"""Set models trained from a store draw their sets through StoreSetSampler, never load the
matrix whole, and learn what the same model learns from the h5ad."""

import warnings

import numpy as np
import pytest

from perturbcast import InputError, read_experiment, simulate
from perturbcast.data.convert import convert
from perturbcast.data.store import StoreMatrix
from perturbcast.data.store_sampler import StoreSetSampler
from perturbcast.models import get_model, set_shrink
from perturbcast.models.latent import LatentSpace

TINY = dict(set_size=16, n_sets=4, dim=16, depth=1, n_heads=2, n_latent=8, embeddings="none")


@pytest.fixture(scope="module")
def screen(tmp_path_factory):
    """A screen with strong effects (learned in 200 steps), as h5ad and as a store."""
    a = simulate(n_genes=40, n_singles=6, n_combos=0, n_contexts=2, n_batches=1,
                 cells_per_condition=60, control_cells=200, seed=1)
    d = tmp_path_factory.mktemp("store_training")
    a.write_h5ad(d / "sim.h5ad")
    convert([d / "sim.h5ad"], d / "st", "perturbation", "control", context_key="context")
    return a, d / "st"


def _fit(exp, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_model("transition", seed=0, **{**TINY, **params}).fit(exp)


def test_store_training_reads_sets_not_the_matrix(screen, monkeypatch):
    _, store = screen
    exp = read_experiment(store, "perturbation", "control", context_key="context")
    reads, csr_rows, probe_reads, in_probe = [], [], [], []

    def no_dense(self, idx, _orig=StoreMatrix.rows):
        # the only dense reads: shrink=auto's probes drawing a held-out condition's controls
        if not in_probe or len(idx) > set_shrink.PROBE_CELLS:
            raise AssertionError(f"dense read of {len(idx)} rows during store training")
        probe_reads.append(len(idx))
        return _orig(self, idx)

    def probe(*args, _orig=set_shrink._probe_predictions):
        in_probe.append(True)
        try:
            return _orig(*args)
        finally:
            in_probe.pop()

    def count_csr(self, idx, _orig=StoreMatrix.csr_rows):
        csr_rows.append(len(idx))
        return _orig(self, idx)

    def spy(self, sets, _orig=StoreSetSampler.read_sets):
        reads.append(len(sets))
        return _orig(self, sets)

    monkeypatch.setattr(StoreMatrix, "rows", no_dense)
    monkeypatch.setattr(StoreMatrix, "csr_rows", count_csr)
    monkeypatch.setattr(StoreSetSampler, "read_sets", spy)
    monkeypatch.setattr(set_shrink, "_probe_predictions", probe)
    model = _fit(exp, max_steps=5)
    assert model.training_summary["shrink_n_probes"] >= 1 and probe_reads  # the default
    assert model.training_summary["sampler"] == "store"
    assert model.training_summary["data_mode"] == "store"
    assert len(reads) >= 5 + 4  # every training step and the 4 validation batches
    assert max(csr_rows) <= 4096  # the latent's streaming passes read bounded chunks
    with pytest.raises(InputError, match="sampler='store'"):
        _fit(read_experiment(screen[0], "perturbation", "control"), sampler="store")


def test_store_training_is_seeded_and_workers_do_not_change_it(screen):
    _, store = screen
    exp = read_experiment(store, "perturbation", "control", context_key="context")
    a = _fit(exp, max_steps=8).net.state_dict()
    b = _fit(exp, max_steps=8, num_workers=2).net.state_dict()
    c = _fit(exp, max_steps=8, val_fraction=0.0).net.state_dict()  # no held-out cells
    for k, v in a.items():
        np.testing.assert_array_equal(v.numpy(), b[k].numpy(), err_msg=k)
    assert any(not np.array_equal(v.numpy(), c[k].numpy()) for k, v in a.items())


def test_store_training_learns_what_the_h5ad_training_learns(screen):
    adata, store = screen
    exp = read_experiment(store, "perturbation", "control", context_key="context")
    ref = read_experiment(adata, "perturbation", "control", context_key="context")
    params = dict(max_steps=200, max_epochs=None, lr=5e-3, dim=32)
    keys, means = ref.group_means(("perturbation", "context"))
    ctrl = {c: means[i] for i, (p, c) in enumerate(zip(keys.perturbation, keys.context,
                                                        strict=True)) if p == "control"}
    conds = [tuple(x) for x in ref.conditions()[["perturbation", "context"]].itertuples(
        index=False)]
    real = np.stack([means[((keys.perturbation == p) & (keys.context == c)).to_numpy()][0]
                     - ctrl[c] for p, c in conds])
    pred = {}
    for name, e in (("store", exp), ("h5ad", ref)):
        model = _fit(e, **params)
        assert model.training_summary["sampler"] == ("store" if name == "store" else "rows")
        out = model.predict(e, conds, n_cells=50)
        pred[name] = np.stack([out.X[((out.obs.perturbation == p) & (out.obs.context == c))
                                     .to_numpy()].mean(0) - ctrl[c] for p, c in conds])
    err = {k: float(np.abs(v - real).mean()) for k, v in pred.items()}
    # measured: both correlate 0.89 with the real mean changes, errors 0.135 vs 0.134 (|real|
    # 0.225), and the two predictions correlate 0.96
    for v in pred.values():
        assert np.corrcoef(v.ravel(), real.ravel())[0, 1] > 0.8
    assert abs(err["store"] - err["h5ad"]) < 0.1 * np.abs(real).mean()
    assert np.corrcoef(pred["store"].ravel(), pred["h5ad"].ravel())[0, 1] > 0.9


def test_streaming_pca_equals_the_dense_fit(monkeypatch):
    import scipy.sparse as sp

    x = sp.random(3000, 60, density=0.1, format="csr", random_state=0, dtype=np.float32)
    x.data = np.log1p(5 * x.data)
    x = sp.csr_matrix(x + sp.random(3000, 60, density=0.02, random_state=1) * 50
                      + sp.csr_matrix(np.outer(np.r_[np.ones(1500), np.zeros(1500)],
                                               np.r_[np.full(5, 2.0), np.zeros(55)])))
    dense = LatentSpace("pca", 6).fit(x.toarray(), np.random.default_rng(0))
    sparse = LatentSpace("pca", 6).fit_sparse(lambda s: x[s], 3000, np.random.default_rng(0),
                                             chunk=700)
    cos = np.abs(dense.components.T @ sparse.components)
    np.testing.assert_allclose(cos, np.eye(6), atol=1e-3)
    np.testing.assert_allclose(sparse.mean, dense.mean, rtol=1e-5, atol=1e-6)
    assert sparse.scale == pytest.approx(dense.scale, rel=1e-4)
    monkeypatch.setattr("perturbcast.models.latent.MAX_EXACT_SVD_GENES", 20)  # randomised
    approx = LatentSpace("pca", 6).fit_sparse(lambda s: x[s], 3000, np.random.default_rng(0),
                                             chunk=700)
    assert abs(dense.components[:, 0] @ approx.components[:, 0]) > 0.95  # the strong PC
    assert approx.scale == pytest.approx(dense.scale, rel=0.02)


def test_incontext_reads_store_rows_per_batch(screen, monkeypatch):
    import perturbcast.models.incontext as incontext

    _, store = screen
    exp = read_experiment(store, "perturbation", "control", context_key="context")
    params = dict(n_modules=4, dim=8, depth=1, n_heads=2, set_size=8, n_prompt=4, n_sets=2,
                  pretrain_steps=3, finetune_steps=3, bank_cells=4, bank_controls=8)
    sizes = []

    def count_rows(self, idx, _orig=StoreMatrix.rows):
        sizes.append(len(idx))
        return _orig(self, idx)

    monkeypatch.setattr(StoreMatrix, "rows", count_rows)
    lazy = get_model("incontext", seed=0, **params).fit(exp).net.state_dict()
    assert sizes and max(sizes) < exp.n_cells // 4  # per batch (and the bank), never all
    monkeypatch.setattr(incontext, "is_store_backed", lambda exp: False)  # dense rows
    dense = get_model("incontext", seed=0, **params).fit(exp).net.state_dict()
    assert max(sizes) == exp.n_cells  # that read them all at once
    for k, v in lazy.items():
        np.testing.assert_array_equal(v.numpy(), dense[k].numpy(), err_msg=k)


def test_dropping_mapped_pages_keeps_the_values(screen, tmp_path, monkeypatch):
    """Store pages are unmapped (madvise) every RELEASE_BYTES read or written; with a release
    after every read and write, convert writes and the sampler reads the same values."""
    import perturbcast.data.convert as convert_module
    import perturbcast.data.store as store_module

    adata, store = screen
    adata.write_h5ad(tmp_path / "sim.h5ad")
    monkeypatch.setattr(convert_module, "RELEASE_BYTES", 1)
    monkeypatch.setattr(store_module, "RELEASE_BYTES", 1)
    again = convert([tmp_path / "sim.h5ad"], tmp_path / "st", "perturbation", "control",
                    context_key="context", chunk_size=50)
    for name in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(np.load(again / f"{name}.npy"),
                                      np.load(store / f"{name}.npy"), err_msg=name)
    a, b = (StoreSetSampler(s, set_size=8, n_sets=2, seed=0) for s in (store, again))
    for i in range(3):
        np.testing.assert_array_equal(a.batch(0, i)["pert"].data, b.batch(0, i)["pert"].data)
    rows = np.arange(0, 500, 7)
    np.testing.assert_array_equal(StoreMatrix(again).rows(rows), StoreMatrix(store).rows(rows))


def test_store_training_keeps_base_validation_and_early_stopping(screen):
    _, store = screen
    exp = read_experiment(store, "perturbation", "control", context_key="context")
    model = _fit(exp, base="additive", max_steps=300, max_epochs=None, patience=1,
                 min_delta=0.9, set_size=8, n_sets=2, dim=8)
    s = model.training_summary
    assert s["sampler"] == "store" and s["base"] == "additive"
    assert s["stopped_early"] and s["steps"] == 200  # 2 validations (every 100 steps)
    assert len(s["val_loss_per_epoch"]) == 2 and np.isfinite(s["best_val_loss"])
    untrained = _fit(exp, base="additive", max_steps=0)  # the correction starts at zero
    conds = [("G0001", "ctx0")]
    additive = get_model("additive").fit(exp)
    np.testing.assert_allclose(untrained.predict(exp, conds, n_cells=30).X.mean(0),
                               additive.predict(exp, conds, n_cells=30).X.mean(0), atol=1e-3)


def test_a_context_without_training_controls_is_named(screen):
    _, store = screen
    exp = read_experiment(store, "perturbation", "control", context_key="context")
    mask = ~(exp.is_control & (exp.contexts == "ctx1"))
    with pytest.raises(InputError, match="context 'ctx1' has perturbed training cells"):
        get_model("transition", max_steps=1, **TINY).fit(exp, mask)
