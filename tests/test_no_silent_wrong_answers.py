"""Inputs that used to give a quietly wrong answer now fail with one line or warn by name."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from _bad_input_common import _cli as _run

from perturbcast import InputError, get_model, make_split, read_experiment
from perturbcast.benchmark import run_benchmark
from perturbcast.data.reading import select_genes
from perturbcast.models import set_model
from perturbcast.train.lightning import SetTrainingModule, TrainConfig

TINY = dict(dim=16, depth=1, n_heads=2, n_latent=8, set_size=16, n_sets=4, max_steps=4,
            patience=50, base="none", shrink=1)  # the network alone: one training per fit



def _log1p_adata(labels: list[str], n_genes: int = 12, seed: int = 0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    x = rng.gamma(2.0, 0.5, (len(labels), n_genes)).astype(np.float32)
    return ad.AnnData(X=x, obs=pd.DataFrame({"perturbation": labels},
                                            index=[f"c{i}" for i in range(len(labels))]),
                      var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))


def test_split_made_with_a_context_key_is_refused_without_it(sim_adata, sim_exp):
    split = make_split(sim_exp, "unseen-perturbation", n_folds=2, seed=0)
    pooled = read_experiment(sim_adata, "perturbation", "control")
    with pytest.raises(InputError, match=r"context key none .*G\d+ \(ctx0\)") as e:
        split.folds[0].train_mask(pooled)
    assert "\n" not in str(e.value) and "'perturbation'" in str(e.value)
    with pytest.raises(InputError, match="not in the data"):
        run_benchmark(pooled, split, ["cell_mean"], show_progress=False)


def test_labels_are_canonical_at_read_time():
    labels = ["control"] * 6 + ["A+control"] * 4 + [" A "] * 4 + ["A"] * 4 + ["B + A"] * 4
    with pytest.warns(UserWarning, match="made canonical.*'A\\+control' -> 'A'"):
        exp = read_experiment(_log1p_adata(labels), "perturbation", "control")
    assert exp.perturbation_names() == ["A", "B+A"]
    assert (exp.perturbations == "A").sum() == 12
    split = make_split(exp, "unseen-perturbation", n_folds=2, seed=0)
    for f in split.folds:  # A can only be on one side of any split
        assert {p for p, _ in f.train}.isdisjoint({p for p, _ in f.test})


def test_genes_can_be_chosen_from_training_cells_only():
    labels = ["control"] * 20 + ["A"] * 10 + ["B"] * 10
    a = _log1p_adata(labels)
    a.X[30:, 11] += np.linspace(0, 8, 10)  # only B's cells make g11 variable
    exp = read_experiment(a, "perturbation", "control", input_scale="log1p")
    train = exp.perturbations != "B"
    assert "g11" in select_genes(exp, 3).genes
    assert "g11" not in select_genes(exp, 3, mask=train).genes
    split = make_split(exp, "unseen-perturbation", n_folds=2, seed=0)
    res = run_benchmark(exp, split, ["cell_mean"], n_top_genes=5, show_progress=False)
    assert len(res.summary) == 1


def test_non_numeric_doses_are_an_error(sim_adata):
    a = sim_adata.copy()
    a.obs["dose"] = np.where(a.obs.perturbation == "control", "0", "10uM")
    exp = read_experiment(a, "perturbation", "control")
    with pytest.raises(InputError, match=r"non-numeric dose.*10uM"):
        get_model("transition", dose_key="dose", **TINY).fit(exp)


def test_unseen_context_and_batch_and_no_validation_warn(sim_adata, sim_exp):
    ctx0 = sim_exp.contexts == "ctx0"
    with pytest.warns(UserWarning, match="context\\(s\\) ctx1 were not in training"):
        get_model("cell_mean").fit(sim_exp, ctx0).predict(sim_exp, [("G0001", "ctx1")])
    with pytest.warns(UserWarning, match="no validation cells.*no early stopping") as shown:
        model = get_model("transition", val_fraction=0.0, **TINY).fit(sim_exp)
    # said once, by the model: not also Lightning's "no val_dataloader. Skipping val loop."
    # (nor torch's LeafSpec notice to Lightning, which says nothing about the run)
    assert not [w for w in shown if "val_dataloader" in str(w.message)
                or "LeafSpec" in str(w.message)]
    other = sim_adata.copy()
    other.obs["batch"] = "rep_new"
    exp = read_experiment(other, "perturbation", "control", context_key="context",
                          batch_key="batch")
    with pytest.warns(UserWarning, match="batch\\(es\\) \\['rep_new'\\] were not in training"):
        model.predict(exp, [("G0001", "ctx0")], n_cells=5)


def test_unseen_perturbation_without_embedding_fails_before_training(sim_exp, monkeypatch,
                                                                       tmp_path, capsys):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking")

    monkeypatch.setattr(set_model, "train_network", no_training)
    split = make_split(sim_exp, "unseen-perturbation", n_folds=2, seed=0)
    with pytest.raises(InputError, match="not seen in training and have no embedding"):
        run_benchmark(sim_exp, split, ["cell_mean", "flow"], show_progress=False,
                      model_params={"flow": {"embeddings": "none", **TINY}})
    path = tmp_path / "sim.h5ad"
    sim_exp.adata.write_h5ad(path)
    split.to_json(tmp_path / "split.json")
    code, err = _run(["train", "--data", str(path), "--perturbation-key", "perturbation",
                      "--control", "control", "--context-key", "context", "--model", "flow",
                      "--split", str(tmp_path / "split.json"), "--param", "embeddings=none",
                      "--out", str(tmp_path / "m")], capsys)
    assert code == 2 and "no embedding" in err and not (tmp_path / "m").exists()


def test_predict_uses_the_models_batch_key(sim_adata, tmp_path, monkeypatch, capsys):
    path = tmp_path / "sim.h5ad"
    a = sim_adata.copy()
    del a.uns["true_effects"]
    a.write_h5ad(path)
    args = ["--perturbation-key", "perturbation", "--control", "control", "--context-key",
            "context", "--batch-key", "batch"]
    params = [x for k, v in TINY.items() for x in ("--param", f"{k}={v}")]
    code, err = _run(["train", "--data", str(path), *args, "--model", "transition", *params,
                      "--out", str(tmp_path / "m")], capsys)
    assert code == 0, err
    seen = []
    original = set_model.SetModel._batch_id
    monkeypatch.setattr(set_model.SetModel, "_batch_id",
                        lambda self, name: seen.append(name) or original(self, name))
    code, err = _run(["predict", "--model", str(tmp_path / "m"), "--data", str(path),
                      "--perturbations", "G0001", "--n-cells", "40", "--out",
                      str(tmp_path / "p.h5ad")], capsys)
    assert code == 0, err
    assert set(seen) == set(sim_adata.obs.batch.astype(str))


@pytest.mark.parametrize("sparse", [False, True])
def test_backed_train_and_predict_sample_with_replacement(sim_adata, tmp_path, capsys, sparse):
    a = sim_adata.copy()
    del a.uns["true_effects"]
    a.X = sp.csr_matrix(a.X) if sparse else np.asarray(a.X.toarray() if sp.issparse(a.X)
                                                         else a.X)
    path = tmp_path / "data.h5ad"
    a.write_h5ad(path)
    exp = read_experiment(path, "perturbation", "control", backed=True)
    mem = read_experiment(a, "perturbation", "control")
    idx = np.array([7, 3, 7, 0, 3])
    np.testing.assert_allclose(exp.rows(idx), mem.rows(idx), rtol=1e-6)
    base = ["--data", str(path), "--perturbation-key", "perturbation", "--control", "control",
            "--backed"]
    code, err = _run(["train", *base, "--model", "cell_mean", "--out",
                      str(tmp_path / "m")], capsys)
    assert code == 0, err
    n_ctrl = int((a.obs.perturbation == "control").sum())
    code, err = _run(["predict", "--model", str(tmp_path / "m"), "--data", str(path),
                      "--backed", "--perturbations", "G0001", "--n-cells", str(3 * n_ctrl),
                      "--out", str(tmp_path / "p.h5ad")], capsys)
    assert code == 0, err
    assert ad.read_h5ad(tmp_path / "p.h5ad").n_obs == 3 * n_ctrl


def _validation_module():
    net = torch.nn.Linear(2, 2)

    def val_fn(_, batch):
        return torch.randn(3).pow(2).mean()  # draws noise like the flow's validation

    return SetTrainingModule(net, val_fn, TrainConfig(), {}, val_fn), {"x": torch.zeros(1)}


def test_validation_leaves_the_cpu_generator_alone(monkeypatch):
    module, batch = _validation_module()
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    module.validation_step(batch, 0)
    assert torch.equal(torch.get_rng_state(), before)


def test_validation_restores_cuda_generators(monkeypatch):
    """Fake CUDA generators: validation may seed them but must put them back."""
    state = {"cuda": torch.tensor([7], dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [state["cuda"].clone()])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all",
                        lambda states: state.update(cuda=states[0].clone()))
    monkeypatch.setattr(torch.cuda, "manual_seed_all",
                        lambda seed: state.update(cuda=torch.tensor([seed % 256],
                                                                    dtype=torch.uint8)))
    module, batch = _validation_module()
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    module.validation_step(batch, 0)
    assert state["cuda"].item() == 7
