import json

import numpy as np
import pandas as pd
import pytest

from perturbcast.atlas import predict_atlas, read_target
from perturbcast.atlas.screen import SignatureScorer
from perturbcast.cli import main
from perturbcast.errors import InputError
from perturbcast.models import get_model

CHOSEN = ["G0013", "G0069"]  # singles of the conftest simulator (seed 7)


@pytest.fixture(scope="module")
def models(sim_exp):
    return {n: get_model(n).fit(sim_exp) for n in ("perturbation_mean", "control")}


def _signature(sim_adata, pert: str) -> SignatureScorer:
    """The true effect of ``pert`` in ctx0 (simulator ground truth) as up/down gene lists."""
    eff = sim_adata.uns["true_effects"][f"{pert}|ctx0"]
    genes = np.asarray(sim_adata.var_names)
    return SignatureScorer(list(genes[eff > 0.5]), list(genes[eff < -0.5]))


def _population(sim_adata, pert: str, path) -> None:
    """The real (raw count) cells of ``pert`` in ctx0, as an .h5ad target."""
    obs = sim_adata.obs
    cells = sim_adata[((obs.perturbation == pert) & (obs.context == "ctx0")).to_numpy()].copy()
    del cells.uns["true_effects"]
    cells.write_h5ad(path)


def _screen(model, exp, scorer, tmp_path):
    res = predict_atlas(model, exp, exp.singles(), ["ctx0"], 30, tmp_path / "a.h5ad",
                        scorer=scorer, show_progress=False)
    return res.ranked


@pytest.mark.parametrize("pert", CHOSEN)
def test_signature_screen_ranks_the_true_perturbation_first(tmp_path, sim_adata, sim_exp,
                                                            models, pert):
    """A fitted model (predicting ctx0 from the other context) puts the perturbation whose
    true effect defines the signature on top; the identity model ranks only noise."""
    ranked = _screen(models["perturbation_mean"], sim_exp, _signature(sim_adata, pert), tmp_path)
    score = ranked.signature_score_change
    assert ranked.perturbation[0] == pert
    assert pd.read_csv(tmp_path / "a.ranked.csv").perturbation[0] == pert
    noise = _screen(models["control"], sim_exp, _signature(sim_adata, pert), tmp_path)
    assert noise.signature_score_change.abs().max() < 0.5 < score[0] - score[1]


@pytest.mark.parametrize("pert", CHOSEN)
def test_population_screen_ranks_the_true_perturbation_first(tmp_path, sim_adata, sim_exp,
                                                             models, pert):
    _population(sim_adata, pert, tmp_path / "target.h5ad")
    scorer = read_target(tmp_path / "target.h5ad", max_cells=100)
    ranked = _screen(models["perturbation_mean"], sim_exp, scorer, tmp_path)
    score = ranked.energy_toward_target
    assert ranked.perturbation[0] == pert
    noise = _screen(models["control"], sim_exp, scorer, tmp_path)
    assert noise.energy_toward_target.abs().max() < 0.5 < score[0] - score[1]


def test_population_target_per_context(tmp_path, sim_adata, sim_exp, models):
    """With a context column, each context is scored against its own target cells."""
    obs = sim_adata.obs
    keep = (((obs.perturbation == CHOSEN[0]) & (obs.context == "ctx0"))
            | ((obs.perturbation == CHOSEN[1]) & (obs.context == "ctx1"))).to_numpy()
    target = sim_adata[keep].copy()
    del target.uns["true_effects"]
    target.write_h5ad(tmp_path / "t.h5ad")
    scorer = read_target(tmp_path / "t.h5ad", max_cells=100, context_key="context")
    res = predict_atlas(models["perturbation_mean"], sim_exp, sim_exp.singles(), None, 30,
                        tmp_path / "a.h5ad", scorer=scorer, show_progress=False)
    top = res.ranked.groupby("context").perturbation.first()
    assert top.to_dict() == {"ctx0": CHOSEN[0], "ctx1": CHOSEN[1]}
    one = sim_adata[keep & (obs.context == "ctx0").to_numpy()].copy()
    del one.uns["true_effects"]
    one.write_h5ad(tmp_path / "one.h5ad")
    with pytest.raises(InputError, match="no cells of context 'ctx1'"):
        predict_atlas(models["control"], sim_exp, ["G0013"], None, 5, tmp_path / "b.h5ad",
                      scorer=read_target(tmp_path / "one.h5ad", context_key="context"))
    with pytest.raises(InputError, match="celltype"):
        read_target(tmp_path / "one.h5ad", context_key="celltype")


def test_signature_files(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps({"up": ["A", "B"], "down": ["C"]}))
    pd.DataFrame({"gene": ["A", "C"], "direction": ["up", "-1"]}).to_csv(tmp_path / "s.csv",
                                                                         index=False)
    s = read_target(tmp_path / "s.json")
    assert (s.up, s.down) == (["A", "B"], ["C"])
    s = read_target(tmp_path / "s.csv")
    assert (s.up, s.down) == (["A"], ["C"])
    pd.DataFrame({"gene": ["A"], "direction": ["sideways"]}).to_csv(tmp_path / "b.csv",
                                                                    index=False)
    with pytest.raises(InputError, match="sideways"):
        read_target(tmp_path / "b.csv")
    with pytest.raises(InputError, match="gene,direction"):
        pd.DataFrame({"name": ["A"]}).to_csv(tmp_path / "c.csv", index=False)
        read_target(tmp_path / "c.csv")
    with pytest.raises(InputError, match="--rank-by"):
        read_target(tmp_path / "s.txt")


def test_mismatched_genes_are_refused(tmp_path, sim_adata, sim_exp, models):
    m = models["perturbation_mean"]
    with pytest.raises(InputError, match="NOTAGENE"):
        _screen(m, sim_exp, SignatureScorer(["G0001", "NOTAGENE"], []), tmp_path)
    sub = sim_adata[:50, :40].copy()
    del sub.uns["true_effects"]
    sub.write_h5ad(tmp_path / "t.h5ad")
    with pytest.raises(InputError, match="40 model genes are not among"):
        _screen(m, sim_exp, read_target(tmp_path / "t.h5ad"), tmp_path)
    assert not (tmp_path / "a.h5ad").exists()


def test_cli_atlas_with_screen(tmp_path, sim_adata, sim_exp, models, capsys):
    data = tmp_path / "sim.h5ad"
    a = sim_adata.copy()
    del a.uns["true_effects"]
    a.write_h5ad(data)
    models["perturbation_mean"].save(tmp_path / "model")
    sig = _signature(sim_adata, CHOSEN[0])
    (tmp_path / "sig.json").write_text(json.dumps({"up": sig.up, "down": sig.down}))
    (tmp_path / "perts.txt").write_text("\n".join(sim_exp.singles()))
    args = ["atlas", "--model", str(tmp_path / "model"), "--data", str(data), "--perturbations",
            f"@{tmp_path / 'perts.txt'}", "--contexts", "ctx0", "--n-cells", "20", "--out",
            str(tmp_path / "out" / "atlas.h5ad"), "--rank-by", str(tmp_path / "sig.json")]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    ranked = pd.read_csv(tmp_path / "out" / "atlas.ranked.csv")
    assert ranked.perturbation[0] == CHOSEN[0] and list(ranked["rank"]) == list(range(1, 9))
    assert "in-silico screen" in printed and CHOSEN[0] in printed
    summary = pd.read_csv(tmp_path / "out" / "atlas.summary.csv")
    assert len(summary) == 8 and "signature_score_change" in summary
    # a user error: one line, exit code 2, nothing written
    (tmp_path / "bad.json").write_text(json.dumps({"up": ["NOTAGENE"]}))
    with pytest.raises(SystemExit) as exc:
        main(args[:-3] + [str(tmp_path / "bad" / "a.h5ad"), "--rank-by",
                          str(tmp_path / "bad.json")])
    assert exc.value.code == 2
    assert "NOTAGENE" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())
