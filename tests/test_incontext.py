"""The in-context tabular model: masking, attention mask, equivariance, in-context recovery of
an unseen perturbation, save/load, embeddings, errors, CLI."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

from perturbcast.cli import main
from perturbcast.data import read_experiment
from perturbcast.datasets import simulate
from perturbcast.errors import InputError
from perturbcast.models import get_model
from perturbcast.models.incontext_sets import (
    InContextSampler,
    PretrainSampler,
    prompt_cells,
    roles,
)
from perturbcast.modules.tabular import (
    TabularSetNet,
    masked_reconstruction_loss,
    nb_log_likelihood,
    prompt_mask,
)
from perturbcast.modules.tabular_cache import encode_prompt, predict_queries

TINY = dict(n_modules=8, dim=8, depth=2, n_heads=2, set_size=24, n_prompt=12, n_sets=4,
            pretrain_steps=10, finetune_steps=120, lr=3e-3, bank_cells=16, bank_controls=24)
NEW = "G0006"  # never in training


@pytest.fixture(scope="module")
def ic_exp():
    adata = simulate(n_genes=60, n_singles=6, n_combos=0, n_contexts=3, n_batches=1,
                     cells_per_condition=40, control_cells=80, seed=7)
    return read_experiment(adata, "perturbation", "control", context_key="context")


@pytest.fixture(scope="module")
def ic_model(ic_exp):
    assert NEW in ic_exp.perturbation_names()
    return get_model("incontext", seed=0, **TINY).fit(ic_exp, ic_exp.perturbations != NEW)


def _net(cross: str = "module") -> TabularSetNet:
    torch.manual_seed(0)
    return TabularSetNet(30, n_modules=4, dim=8, depth=2, n_heads=2, cross=cross).eval()


def test_hidden_genes_are_shared_by_the_set_and_only_they_count():
    groups = [np.arange(50), np.arange(50, 80)]
    cells, hidden = PretrainSampler(groups, 40, 16).sample(20, np.random.default_rng(0))
    assert cells.shape == (20, 16) and hidden.shape == (20, 40)  # one gene subset per set
    frac = hidden.mean(1)
    assert frac.min() >= 0.1 - 1 / 40 and frac.max() <= 0.8 + 1 / 40
    assert all(np.isin(c, groups[0]).all() or np.isin(c, groups[1]).all() for c in cells)
    net = _net()
    x = torch.rand(2, 10, 30)
    hid = torch.zeros(2, 30, dtype=torch.bool)
    hid[:, :12] = True
    x2 = x.clone()
    x2[:, :, :12] = 5.0  # hidden values never reach the network (every cell of the set)
    with torch.no_grad():
        assert torch.allclose(net(x, hidden=hid), net(x2, hidden=hid))
    pred = torch.rand(2, 10, 30)
    pred_vis = pred.clone()
    pred_vis[:, :, 12:] += 3.0  # changing visible entries leaves the loss unchanged
    loss = masked_reconstruction_loss(pred, x, hid)
    assert torch.isclose(loss, masked_reconstruction_loss(pred_vis, x, hid))
    pred_hid = pred.clone()
    pred_hid[:, 0, 0] += 1.0
    assert not torch.isclose(loss, masked_reconstruction_loss(pred_hid, x, hid))


@pytest.mark.parametrize("cross", ["module", "flat"])
def test_prompt_rows_never_see_query_rows(cross):
    net = _net(cross)
    x = torch.rand(2, 14, 30)
    role = torch.from_numpy(roles(3, 8))
    mask = prompt_mask(6, 8)
    x2 = x.clone()
    x2[:, 10] += 2.0  # change one query cell
    with torch.no_grad():
        a, b = net.encode(x, role, mask=mask), net.encode(x2, role, mask=mask)
        assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6)
        assert not torch.allclose(a[:, 6:10], b[:, 6:10], atol=1e-4)  # other queries see it
        c, d = net.encode(x, role), net.encode(x2, role)  # without the mask, prompts see it
        assert not torch.allclose(c[:, :6], d[:, :6], atol=1e-4)


@pytest.mark.parametrize("cross", ["module", "flat"])
def test_equivariant_under_permutations_within_prompt_and_query(cross):
    net = _net(cross)
    x = torch.rand(1, 14, 30)
    role = torch.from_numpy(roles(3, 8))
    perm = np.concatenate([np.random.default_rng(0).permutation(3),
                           3 + np.random.default_rng(1).permutation(3),
                           6 + np.random.default_rng(2).permutation(8)])
    with torch.no_grad():
        y = net(x, role, mask=prompt_mask(6, 8))
        y_perm = net(x[:, perm], role, mask=prompt_mask(6, 8))
    assert torch.allclose(y[:, perm], y_perm, atol=1e-5)


def test_prompt_rule_other_contexts_then_singles_then_same_context():
    perts = np.array(["A", "A", "B", "A+B", "C"])
    ctxs = np.array(["x", "y", "x", "x", "x"])
    split = lambda label: tuple(label.split("+"))  # noqa: E731
    assert prompt_cells(perts, ctxs, "A", "x", split) == (np.array([1]), "other_contexts")
    idx, rule = prompt_cells(perts, ctxs, "A+B", "x", split)
    assert rule == "components" and idx.tolist() == [0, 1, 2]
    assert prompt_cells(perts, ctxs, "C", "x", split)[1] == "same_context"
    assert prompt_cells(perts, ctxs, "D", "x", split)[1] == ""


def test_nb_log_likelihood_matches_torch():
    counts = torch.tensor([[0.0, 3.0, 10.0]])
    mean = torch.tensor([[0.5, 2.0, 12.0]])
    log_theta = torch.tensor([0.3, -0.5, 1.2])
    theta = log_theta.exp()
    ref = torch.distributions.NegativeBinomial(total_count=theta, logits=(mean / theta).log())
    assert torch.allclose(nb_log_likelihood(counts, mean, log_theta), ref.log_prob(counts),
                          atol=1e-4)


def _true_change(exp, pert, ctx):
    ctrl = exp.rows(np.flatnonzero(exp.is_control & (exp.contexts == ctx))).mean(0)
    return exp.rows(exp.index_of(pert, ctx)).mean(0) - ctrl, ctrl


def test_unseen_perturbation_is_recovered_from_prompt_cells_only(ic_exp, ic_model):
    true, ctrl = _true_change(ic_exp, NEW, "ctx0")
    pred = ic_model.predict(ic_exp, [(NEW, "ctx0")], n_cells=60, prompt=ic_exp)
    r = np.corrcoef(np.asarray(pred.X).mean(0) - ctrl, true)[0, 1]
    # a broken prompt: control cells of the other contexts relabelled as the perturbation
    other = ic_exp.subset((ic_exp.contexts != "ctx0") & ic_exp.is_control).adata
    fake = ad.concat([other, other], index_unique="-")
    fake.obs["perturbation"] = ["control"] * other.n_obs + [NEW] * other.n_obs
    fake_exp = read_experiment(fake, "perturbation", "control", context_key="context",
                               input_scale="log1p")
    null = ic_model.predict(ic_exp, [(NEW, "ctx0")], n_cells=60, prompt=fake_exp)
    r_null = np.corrcoef(np.asarray(null.X).mean(0) - ctrl, true)[0, 1]
    assert r > 0.4 and r > r_null + 0.3, (r, r_null)  # measured: 0.51 vs -0.13
    with pytest.raises(InputError, match=NEW):  # the default prompt has no cells of it
        ic_model.predict(ic_exp, [(NEW, "ctx0")], n_cells=5)


def test_save_load_identical_predictions_and_embeddings(ic_exp, ic_model, tmp_path):
    conds = [("G0013", "ctx0"), ("G0013", "ctx1")]
    pred = ic_model.predict(ic_exp, conds, n_cells=30, include_controls=True)
    ic_model.save(tmp_path / "m")
    loaded = type(ic_model).load(tmp_path / "m")
    again = loaded.predict(ic_exp, conds, n_cells=30, include_controls=True)
    np.testing.assert_array_equal(np.asarray(pred.X), np.asarray(again.X))
    emb = loaded.embed(ic_exp.adata)
    assert emb.shape == (ic_exp.n_cells, 8 * 8) and np.isfinite(emb).all()
    np.testing.assert_array_equal(emb, ic_model.embed(ic_exp))


def test_nb_head_fits_and_predicts(ic_exp):
    model = get_model("incontext", seed=0, head="nb", **dict(TINY, pretrain_steps=3,
                                                            finetune_steps=3))
    pred = model.fit(ic_exp).predict(ic_exp, [("G0013", "ctx0")], n_cells=10, prompt=None)
    x = np.asarray(pred.X)
    assert x.shape == (10, ic_exp.n_genes) and np.isfinite(x).all() and (x >= 0).all()


def test_prompt_filter_and_bad_parameters(ic_exp, ic_model):
    with pytest.raises(InputError, match="selects no cells"):
        ic_model.predict(ic_exp, [("G0013", "ctx0")], n_cells=5, prompt=ic_exp,
                         prompt_filter={"context": "nope"})
    only1 = ic_model.predict(ic_exp, [("G0013", "ctx0")], n_cells=5, prompt=ic_exp,
                             prompt_filter={"context": "ctx1"})
    assert only1.n_obs == 5
    with pytest.raises(InputError, match="cross"):
        get_model("incontext", cross="diagonal")
    with pytest.raises(InputError, match="val_fraction"):
        get_model("incontext", val_fraction=1.5)


def _run(args) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return exc.code or 0
    return 0


def test_cli_train_predict_with_prompt_and_embed(tmp_path, ic_exp):
    data = tmp_path / "sim.h5ad"
    ic_exp.adata.write_h5ad(data)
    params = [a for k, v in dict(TINY, pretrain_steps=2, finetune_steps=2).items()
              for a in ("--param", f"{k}={v}")]
    assert 0 == _run(["train", "--data", str(data), "--perturbation-key", "perturbation",
                      "--control", "control", "--context-key", "context", "--model",
                      "incontext", "--out", str(tmp_path / "m"), *params])
    assert 0 == _run(["predict", "--model", str(tmp_path / "m"), "--data", str(data),
                      "--perturbations", "G0013", "--contexts", "ctx0", "--n-cells", "7",
                      "--prompt", str(data), "--prompt-filter", "context=ctx1", "--out",
                      str(tmp_path / "pred.h5ad")])
    assert ad.read_h5ad(tmp_path / "pred.h5ad").n_obs == 7
    assert 0 == _run(["embed", "--model", str(tmp_path / "m"), "--data", str(data), "--out",
                      str(tmp_path / "emb.h5ad")])
    assert ad.read_h5ad(tmp_path / "emb.h5ad").obsm["X_perturbcast"].shape == (ic_exp.n_cells,
                                                                               64)
    before = (tmp_path / "emb.h5ad").stat().st_mtime_ns  # a second run needs --overwrite
    assert 2 == _run(["embed", "--model", str(tmp_path / "m"), "--data", str(data), "--out",
                      str(tmp_path / "emb.h5ad")])
    assert (tmp_path / "emb.h5ad").stat().st_mtime_ns == before
    assert 0 == _run(["embed", "--model", str(tmp_path / "m"), "--data", str(data), "--out",
                      str(tmp_path / "emb.h5ad"), "--overwrite"])
    code = _run(["predict", "--model", str(tmp_path / "m"), "--data", str(data),
                 "--perturbations", "G0013", "--prompt-filter", "oops", "--out",
                 str(tmp_path / "bad.h5ad")])
    assert code == 2 and not (tmp_path / "bad.h5ad").exists()


def test_validation_cells_are_kept_out_of_training_sets():
    perts = np.array(["c"] * 8 + ["A"] * 8 + ["A"] * 8)
    ctxs = np.array(["x"] * 4 + ["y"] * 4 + ["x"] * 8 + ["y"] * 8)
    held = np.zeros(24, bool)
    held[[0, 4, 8, 9, 16]] = True
    split = lambda label: (label,)  # noqa: E731
    rng = np.random.default_rng(0)
    train = InContextSampler(perts, ctxs, "c", split, 3, 4, held_out=held)
    rows, targets = train.sample(20, rng)
    assert not held[rows].any() and not held[targets].any()
    val = InContextSampler(perts, ctxs, "c", split, 3, 4, held_out=held, validation=True)
    rows, targets = val.sample(20, rng)
    assert held[targets].all() and not held[rows[:, :6]].any()  # prompts: training cells
    assert held[rows[:, 6:]].all()  # queries: held-out controls of the target context


def _val_fit(exp, **extra):
    params = dict(TINY, pretrain_steps=20, finetune_steps=60, val_fraction=0.2, val_every=5,
                  patience=2)
    return get_model("incontext", seed=0, **{**params, **extra}).fit(exp)


def test_early_stopping_on_a_validation_plateau(ic_exp):
    model = _val_fit(ic_exp, lr=0.0)  # nothing changes: the validation loss is flat
    summary = model.training_summary
    assert summary["validation_cells"] > 0
    for phase in ("pretrain", "finetune"):
        assert summary[phase]["stopped_early"], summary[phase]
        assert summary[phase]["steps"] == 15  # 1 reference + patience 2 validations of 5 steps


def test_no_validation_cells_is_announced(ic_exp):
    with pytest.warns(UserWarning, match="no validation cells for pretrain"):
        model = _val_fit(ic_exp, val_fraction=0.001, pretrain_steps=2, finetune_steps=2)
    assert model.training_summary["validation_cells"] == 0
    assert model.training_summary["finetune"]["steps"] == 2


def test_validated_fit_is_deterministic(ic_exp):
    conds = [("G0013", "ctx0")]
    a, b = (_val_fit(ic_exp, pretrain_steps=10, finetune_steps=10) for _ in range(2))
    assert a.training_summary == b.training_summary
    np.testing.assert_array_equal(np.asarray(a.predict(ic_exp, conds, n_cells=20).X),
                                  np.asarray(b.predict(ic_exp, conds, n_cells=20).X))


@pytest.mark.parametrize(("cross", "head", "paths"), [("module", "gaussian", True),
                                                      ("flat", "gaussian", True),
                                                      ("module", "nb", True),
                                                      ("module", "gaussian", False)])
def test_cached_prompt_gives_the_uncached_outputs(cross, head, paths):
    torch.manual_seed(0)
    net = TabularSetNet(30, n_modules=4, dim=8, depth=2, n_heads=2, cross=cross, head=head,
                        prompt_summary=paths, change_skip=paths).eval()
    with torch.no_grad():  # make the prompt paths matter (they start small)
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    prompt, queries = torch.rand(1, 6, 30) * 3, torch.rand(3, 8, 30) * 3
    role = torch.from_numpy(roles(3, 8))
    with torch.no_grad():
        cache = encode_prompt(net, prompt, role[:6])
        fast = predict_queries(net, queries, cache)
        for s in range(3):  # each [prompt | queries of set s] run whole, masked
            full = net(torch.cat([prompt, queries[s:s + 1]], 1), role, mask=prompt_mask(6, 8))
            torch.testing.assert_close(fast[s], full[0, 6:], atol=1e-5, rtol=1e-5)


def test_model_predictions_with_the_cache_equal_the_uncached_path(ic_exp, ic_model):
    rng = np.random.default_rng(0)
    rows = rng.random((2 * TINY["n_prompt"], ic_exp.n_genes), dtype=np.float32) * 2
    x_ctrl = rng.random((50, ic_exp.n_genes), dtype=np.float32) * 2  # sets of 17, 17, 16
    fast = ic_model._query_outputs(rows, x_ctrl)
    np.testing.assert_allclose(fast, ic_model._query_outputs(rows, x_ctrl, cached=False),
                               atol=1e-5, rtol=1e-5)


def test_default_fit_holds_out_validation_cells(ic_model):
    summary = ic_model.training_summary  # TINY leaves val_fraction at its default (0.1)
    assert summary["validation_cells"] > 0
    assert len(summary["finetune"]["val_loss_per_epoch"]) >= 2


def test_finetune_validation_is_the_relative_error_of_the_mean_change(ic_model):
    n_prompt = TINY["n_prompt"]
    x = torch.rand(1, 2 * n_prompt + 10, 60) * 2
    with torch.no_grad():
        pred = ic_model._run(ic_model.net, x, n_prompt)
        start = x[:, 2 * n_prompt:].mean(1, keepdim=True)
        loss = ic_model.finetune_validation_loss
        exact = loss(ic_model.net, {"x": x, "target": pred})
        double = loss(ic_model.net, {"x": x, "target": start + 2 * (pred - start)})
    assert float(exact) < 1e-8
    assert abs(float(double) - 0.25) < 1e-4  # error |d|^2 against a real change of |2d|^2


def test_a_misspelt_perturbation_gets_a_did_you_mean():
    """'stimulted' has no prompt cells because it is a typo, not a new perturbation."""
    from perturbcast.models.incontext_sets import PromptSource

    perts = np.array(["control"] * 4 + ["stimulated"] * 4)
    src = PromptSource(lambda idx: np.zeros((len(idx), 3)), perts, np.array(["B"] * 8),
                       "control", lambda p: (p,), "the model's prompt bank")
    rng = np.random.default_rng(0)
    assert src.prompt("stimulated", "NK", 2, rng).shape == (4, 3)
    with pytest.raises(InputError, match="Did you mean: 'stimulated'\\? If it is a new "
                                         "perturbation, pass prompt="):
        src.prompt("stimulted", "NK", 2, rng)
    with pytest.raises(InputError) as exc:
        src.prompt("IFNG", "NK", 2, rng)  # nothing close: no suggestion
    assert "Did you mean" not in str(exc.value) and "IFNG' (context 'NK') in the model's " \
        "prompt bank. Pass prompt=" in str(exc.value)

