import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbcast import InputError
from perturbcast.eval import METRICS, Reference, evaluate, vcc_score


def _pair(seed=0, n_perts=6, n_genes=40, noise=0.0):
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 0.5, n_genes)
    rows, labels = [], []
    for p in range(n_perts + 1):
        eff = 0 if p == 0 else rng.normal(0, 0.8, n_genes) * (rng.random(n_genes) < 0.3)
        for _ in range(25):
            rows.append(np.clip(base + eff + rng.normal(0, 0.3, n_genes), 0, None))
            labels.append("ctl" if p == 0 else f"P{p}")
    x = np.array(rows, dtype=np.float32)
    obs = pd.DataFrame({"pert": labels}, index=[f"c{i}" for i in range(len(rows))])
    real = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))
    pred = real.copy()
    pred.X = np.clip(pred.X + noise * rng.normal(0, 1, pred.X.shape), 0, None).astype(np.float32)
    return real, pred


def test_perfect_prediction_scores_perfectly():
    real, pred = _pair()
    res = evaluate(pred, real, "pert", "ctl")
    s = res.summary
    assert set(METRICS) <= set(s)
    assert s["pearson_delta"] == pytest.approx(1.0) and s["mae"] == 0 and s["mse_delta"] == 0
    for m in ("discrimination_score_l1", "discrimination_score_l2", "overlap_at_N",
              "precision_at_N", "de_direction_match", "de_sig_genes_recall", "de_spearman_sig",
              "pearson_edistance", "de_spearman_lfc_sig"):
        assert s[m] == pytest.approx(1.0), m
    assert list(res.per_perturbation.index) == [f"P{i}" for i in range(1, 7)]


def test_noisy_prediction_scores_worse_and_reference_reuse():
    real, pred = _pair(noise=0.6)
    ref = Reference(real, "pert", "ctl")
    res = evaluate(pred, ref)
    assert res.summary["mae"] > 0.1 and res.summary["pearson_delta"] < 0.95
    res2 = evaluate(pred, real, "pert", "ctl")
    assert res.summary == pytest.approx(res2.summary, nan_ok=True)


def test_vcc_score():
    user = {"mae": 0.05, "discrimination_score_l1": 0.8, "overlap_at_N": 0.2}
    base = {"mae": 0.1, "discrimination_score_l1": 0.6, "overlap_at_N": 0.2}
    score, parts = vcc_score(user, base)
    assert parts == pytest.approx({"mae": 0.5, "discrimination_score_l1": 0.5,
                                   "overlap_at_N": 0.0})
    assert score == pytest.approx(1 / 3)
    worse = {"mae": 0.2, "discrimination_score_l1": float("nan"), "overlap_at_N": 0.1}
    assert vcc_score(worse, base)[0] == 0.0  # clipped at 0, NaN -> 0
    assert vcc_score(base, base)[0] == 0.0


def test_evaluate_input_errors():
    real, pred = _pair()
    with pytest.raises(InputError, match="differ in perturbations"):
        evaluate(pred[pred.obs.pert != "P3"].copy(), real, "pert", "ctl")
    with pytest.raises(InputError, match="lack 5 real genes"):
        evaluate(pred[:, 5:].copy(), real, "pert", "ctl")
    with pytest.raises(InputError, match="control 'ctrl' not found"):
        evaluate(pred, real, "pert", "ctrl")
    reordered = pred[:, ::-1].copy()
    a = evaluate(reordered, real, "pert", "ctl").summary
    assert a["mae"] == 0.0  # genes are aligned by name
