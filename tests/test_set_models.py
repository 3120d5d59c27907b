"""The set models (flow, transition): known-shift recovery, combos, save/load, errors."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from perturbcast.data import read_experiment
from perturbcast.data.sets import SetSampler, holdout_cells
from perturbcast.errors import InputError
from perturbcast.models import get_model
from perturbcast.models.perturbation_features import load_embedding_table
from perturbcast.models.set_flow import set_mean_error
from perturbcast.modules.flow import interpolate
from perturbcast.modules.losses import energy_distance
from perturbcast.modules.set_net import ConditionalSetNet

# The network alone (base=none, shrink=1): these tests are about what the network learns; the
# default fall-back (base=auto, shrink=auto) is tested in test_set_shrink / test_set_learned.
TINY = dict(dim=32, depth=2, n_heads=2, n_latent=16, set_size=32, n_sets=8, max_steps=300,
            max_epochs=None, lr=3e-3, patience=50,  # max_epochs=None: exactly max_steps
            base="none", shrink=1)
N_GENES = 40
SHIFT = {"A": (slice(0, 8), 1.0), "B": (slice(8, 16), -0.8), "C": (slice(16, 24), 0.7)}


def _true_delta(label: str) -> np.ndarray:
    d = np.zeros(N_GENES)
    for part in label.split("+"):
        sl, v = SHIFT[part]
        d[sl] += v
    return d


def _known_shift_adata(seed: int = 0, labels=("A", "B", "C", "A+B"), n: int = 120):
    """log1p-like data: controls ~ N(2, 0.4); each perturbation shifts a block of genes."""
    rng = np.random.default_rng(seed)
    base = 2.0 + rng.normal(0, 0.3, N_GENES)
    blocks, obs = [], []
    for lab in ("control", *labels):
        m = 300 if lab == "control" else n
        shift = 0 if lab == "control" else _true_delta(lab)
        blocks.append(np.clip(base + shift + rng.normal(0, 0.4, (m, N_GENES)), 0, None))
        obs += [lab] * m
    x = np.concatenate(blocks).astype(np.float32)
    return ad.AnnData(X=x, obs=pd.DataFrame({"perturbation": obs},
                                            index=[f"c{i}" for i in range(len(obs))]),
                      var=pd.DataFrame(index=[f"g{i}" for i in range(N_GENES)]))


@pytest.fixture(scope="module")
def shift_exp():
    return read_experiment(_known_shift_adata(), "perturbation", "control", input_scale="log1p")


@pytest.fixture(scope="module")
def fitted(shift_exp):
    """Both models trained on A, B, C only (A+B is held out: an unseen combo)."""
    train = shift_exp.perturbations != "A+B"
    out = {}
    for name in ("flow", "transition"):
        out[name] = get_model(name, seed=0, **TINY).fit(shift_exp, train)
    return out


def _pred_delta(model, exp, label):
    pred = model.predict(exp, [(label, "all")], n_cells=150)
    ctrl = exp.rows(np.flatnonzero(exp.is_control)).mean(0)
    return np.asarray(pred.X).mean(0) - ctrl


@pytest.mark.parametrize("name", ["flow", "transition"])
def test_recovers_a_known_shift(fitted, shift_exp, name):
    for label in ("A", "B", "C"):
        err = np.abs(_pred_delta(fitted[name], shift_exp, label) - _true_delta(label))
        # an untrained or label-blind model is off by the full shift (0.7-1.0) on 8 genes
        assert err.max() < 0.3, (name, label, err.round(2))
        assert err.mean() < 0.1, (name, label)


@pytest.mark.parametrize("name", ["flow", "transition"])
def test_unseen_combo_pools_its_singles(fitted, shift_exp, name):
    d = _pred_delta(fitted[name], shift_exp, "A+B")
    true = _true_delta("A+B")
    assert np.corrcoef(d, true)[0, 1] > 0.9
    assert np.abs(d - true).mean() < 0.2


def test_flow_keeps_cell_level_spread(fitted, shift_exp):
    """Predicted cells are cells, not a copy of the mean: the spread stays near the real one."""
    pred = fitted["flow"].predict(shift_exp, [("A", "all")], n_cells=150)
    real = shift_exp.rows(np.flatnonzero(shift_exp.perturbations == "A"))
    ratio = np.asarray(pred.X).std(0).mean() / real.std(0).mean()
    assert 0.6 < ratio < 1.4


@pytest.mark.parametrize("name", ["flow", "transition"])
def test_save_load_gives_identical_predictions(fitted, shift_exp, tmp_path, name):
    model = fitted[name]
    conds = [("A", "all"), ("A+B", "all")]
    before = model.predict(shift_exp, conds, n_cells=40)
    model.save(tmp_path / name)
    loaded = type(model).load(tmp_path / name)
    after = loaded.predict(shift_exp, conds, n_cells=40)
    np.testing.assert_array_equal(np.asarray(before.X), np.asarray(after.X))
    assert loaded.params == model.params and loaded.vocabulary == model.vocabulary
    assert (tmp_path / name / "training.json").exists()


def test_unseen_perturbation_without_embedding_is_a_clear_error(fitted, shift_exp):
    with pytest.raises(InputError, match="'D'.*not seen in training.*embedding"):
        fitted["transition"].predict(shift_exp, [("D", "all")], n_cells=10)


def test_embedding_table_lets_unseen_perturbations_through(shift_exp, tmp_path):
    """A user table (one vector per perturbation) is the feature path of unseen labels."""
    names = ["A", "B", "C", "D"]
    vecs = np.eye(4, dtype=np.float32)
    vecs[3] = vecs[0]  # D is described like A
    table = pd.DataFrame(vecs, columns=[f"e{i}" for i in range(4)])
    table.insert(0, "name", names)
    table.to_csv(tmp_path / "emb.csv", index=False)
    train = shift_exp.perturbations != "A+B"
    model = get_model("transition", embeddings=str(tmp_path / "emb.csv"),
                      **{**TINY, "max_steps": 150}).fit(shift_exp, train)
    d = _pred_delta(model, shift_exp, "D")
    assert np.corrcoef(d, _true_delta("A"))[0, 1] > 0.5
    with pytest.raises(InputError, match="'E'"):
        model.predict(shift_exp, [("E", "all")], n_cells=5)


def test_embedding_table_formats(tmp_path):
    names = np.array(["G1", "G2", "G3"])
    vecs = np.arange(6, dtype=np.float32).reshape(3, 2)
    vecs[2, 0] = np.nan
    pd.DataFrame(vecs, index=names).to_parquet(tmp_path / "t.parquet")
    np.savez(tmp_path / "t.npz", genes=names, emb=vecs)
    pd.DataFrame({"gene": names, "a": vecs[:, 0], "b": vecs[:, 1]}).to_csv(
        tmp_path / "t.csv", index=False)
    for f in ("t.parquet", "t.npz", "t.csv"):
        n, v = load_embedding_table(tmp_path / f)
        assert list(n) == ["G1", "G2"] and v.shape == (2, 2)  # the NaN row is dropped
    np.savez(tmp_path / "bad.npz", foo=vecs)
    with pytest.raises(InputError, match="names array"):
        load_embedding_table(tmp_path / "bad.npz")
    with pytest.raises(InputError, match="not found"):
        load_embedding_table(tmp_path / "missing.csv")


def test_unknown_parameter_is_a_clear_error():
    with pytest.raises(InputError, match="unknown parameter.*max_step"):
        get_model("flow", max_step=3)
    with pytest.raises(InputError, match="solver='rk5'"):
        get_model("flow", solver="rk5")


def test_simulated_screen_with_contexts_batches_and_checkpoint(sim_exp, tmp_path):
    """Contexts and batches enter the condition; the Lightning checkpoint carries the config,
    gene list and vocabulary; predictions are cell-level AnnData."""
    model = get_model("flow", seed=1, checkpoint_dir=str(tmp_path / "ckpt"),
                      **{**TINY, "max_steps": 60}).fit(sim_exp)
    ckpt = torch.load(next((tmp_path / "ckpt").glob("*.ckpt")), weights_only=False)
    meta = ckpt["perturbcast"]
    assert meta["genes"] == list(sim_exp.genes) and meta["vocabulary"] == model.vocabulary
    assert meta["params"]["max_steps"] == 60
    conds = [tuple(r) for r in sim_exp.conditions()[["perturbation", "context"]].to_numpy()[:4]]
    pred = model.predict(sim_exp, conds, n_cells=20, include_controls=False)
    assert pred.shape == (80, sim_exp.n_genes) and np.isfinite(pred.X).all()
    assert set(pred.obs["context"]) <= set(sim_exp.context_names())
    assert model.training_summary["steps"] == 60


def test_dose_is_an_input(shift_exp):
    adata = shift_exp.adata.copy()
    adata.obs["dose"] = np.where(adata.obs["perturbation"] == "control", 0.0, 10.0)
    exp = read_experiment(adata, "perturbation", "control", input_scale="log1p")
    model = get_model("transition", dose_key="dose", **{**TINY, "max_steps": 20}).fit(exp)
    assert model.doses["A"] == 10.0
    low = model.features.encode(["A"], [1.0])["dose"]
    assert low[0] == pytest.approx(np.log1p(1.0))
    d10 = model._predict_cells(exp.rows(np.arange(5)), "A", "all", exp, None)
    model.doses["A"] = 1000.0
    exp.adata.obs["dose"] = 1000.0
    d1000 = model._predict_cells(exp.rows(np.arange(5)), "A", "all", exp, None)
    assert not np.allclose(d10, d1000)


def test_sampler_matches_context_and_batch():
    rng = np.random.default_rng(0)
    n = 400
    ctx = rng.integers(1, 3, n)
    batch = rng.integers(1, 3, n)
    is_ctrl = np.arange(n) < 200
    conds = [np.flatnonzero(~is_ctrl & (ctx == c)) for c in (1, 2)]
    smp = SetSampler(conds, np.array([1, 2]), ctx, batch, is_ctrl, set_size=16)
    b = smp.sample(20, rng)
    for k in range(20):
        c = b.condition[k] + 1
        assert (ctx[b.ctrl[k]] == c).all() and (ctx[b.pert[k]] == c).all()
        assert (batch[b.ctrl[k]] == b.batch[k]).all() and (batch[b.pert[k]] == b.batch[k]).all()
        assert is_ctrl[b.ctrl[k]].all() and not is_ctrl[b.pert[k]].any()
    train, val = holdout_cells([np.arange(50), np.arange(3)], 0.2, rng)
    assert len(val[0]) == 10 and not set(val[0]) & set(train[0]) and len(val[1]) == 0


def test_network_shapes_and_energy_distance():
    net = ConditionalSetNet(n_in=6, dim=16, depth=1, n_heads=2, n_learned=3, n_features=4,
                            n_contexts=2, n_batches=0, use_time=True)
    cond = {"learned_idx": torch.tensor([[1, 2], [3, 0]]), "features": torch.randn(2, 2, 4),
            "has_features": torch.tensor([[True, False], [True, False]]),
            "dose": torch.zeros(2), "context": torch.tensor([1, 0]), "batch": torch.zeros(2,
                                                                                        dtype=int)}
    x = torch.randn(2, 5, 6)
    assert net(x, cond, torch.rand(2)).shape == (2, 5, 6)
    y = torch.randn(3, 50, 4)
    assert energy_distance(y, y).abs().max() < 1e-3
    assert (energy_distance(y, y + 1.0) > energy_distance(y, y + 0.3)).all()


def test_flow_mean_weight_adds_the_set_mean_error():
    x1 = torch.randn(3, 20, 4)
    perm = x1[:, torch.randperm(20)]
    assert set_mean_error(perm, x1) < 1e-10  # a pairing inside a set leaves its mean alone
    assert torch.isclose(set_mean_error(x1 + 0.5, x1), torch.tensor(3 * 4 * 0.25 / 3))
    net = ConditionalSetNet(n_in=4, dim=16, depth=1, n_heads=2, n_learned=2, n_features=0,
                            n_contexts=1, n_batches=0, use_time=True)
    cond = {"learned_idx": torch.tensor([[1], [2], [1]]), "features": torch.zeros(3, 1, 0),
            "has_features": torch.zeros(3, 1, dtype=torch.bool), "dose": torch.zeros(3),
            "context": torch.ones(3, dtype=torch.long), "batch": torch.zeros(3, dtype=torch.long)}
    batch = {**cond, "x0": torch.randn(3, 20, 4), "x1": x1 + 2.0}
    losses = {}
    for w in (0.0, 1.0):
        torch.manual_seed(0)  # same flow times for both
        losses[w] = float(get_model("flow", mean_weight=w).loss(net, batch))
    torch.manual_seed(0)
    t = torch.rand(3)
    x1_hat = net(interpolate(batch["x0"], batch["x1"], t), cond, t)
    assert losses[1.0] - losses[0.0] == pytest.approx(float(set_mean_error(x1_hat, batch["x1"])),
                                                      rel=1e-4)
    assert losses[1.0] > losses[0.0] + 1.0  # the untrained endpoints miss the +2 shift
