import re
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from perturbcast.atlas import predict_atlas
from perturbcast.atlas.grid import SUMMARY_COLUMNS, parse_names
from perturbcast.data import read_experiment
from perturbcast.datasets import simulate
from perturbcast.errors import InputError
from perturbcast.models import get_model


@pytest.fixture(scope="module")
def linear(sim_exp):
    return get_model("linear", seed=3).fit(sim_exp)


def test_atlas_shapes_columns_and_backed_read(tmp_path, sim_exp, linear):
    perts = linear.vocabulary[:5]
    out = tmp_path / "atlas.h5ad"
    res = predict_atlas(linear, sim_exp, perts, ["ctx1", "ctx0"], 7, out, show_progress=False)
    a = ad.read_h5ad(out)
    assert a.shape == (5 * 2 * 7, sim_exp.n_genes)
    assert a.X.dtype == np.float32
    assert list(a.var_names) == list(sim_exp.genes)
    assert {"perturbation", "context"} <= set(a.obs.columns)
    assert a.obs.perturbation.cat.categories.tolist() == perts
    assert a.obs.groupby(["perturbation", "context"], observed=True).size().eq(7).all()
    assert a.obs.index.is_unique
    assert a.uns["perturbcast"]["model"] == "linear"
    b = ad.read_h5ad(out, backed="r")
    assert b.shape == a.shape
    np.testing.assert_array_equal(np.asarray(b.X[10:20]), a.X[10:20])
    b.file.close()
    # summary beside the atlas, one row per condition
    summary = pd.read_csv(tmp_path / "atlas.summary.csv")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert len(summary) == 10 and (summary.n_cells == 7).all()
    pd.testing.assert_frame_equal(summary, res.summary, check_dtype=False)
    assert res.ranked is None and not (tmp_path / "atlas.ranked.csv").exists()


def test_atlas_cells_equal_predict_and_summary_is_their_change(tmp_path, sim_exp, linear):
    """Batching conditions into one predict call changes no prediction."""
    perts = linear.vocabulary[:4]
    out = tmp_path / "a.h5ad"
    res = predict_atlas(linear, sim_exp, perts, ["ctx0"], 9, out, show_progress=False,
                        include_controls=True)
    a = ad.read_h5ad(out)
    n_ctrl = int((sim_exp.is_control & (sim_exp.contexts == "ctx0")).sum())
    assert a.n_obs == 4 * 9 + n_ctrl
    assert (a.obs.perturbation == "control").sum() == n_ctrl
    # the control label asked for as a perturbation too: one category, both sets of cells
    predict_atlas(linear, sim_exp, ["control", *perts], ["ctx0"], 9, tmp_path / "c.h5ad",
                  show_progress=False, include_controls=True)
    c = ad.read_h5ad(tmp_path / "c.h5ad")
    assert (c.obs.perturbation == "control").sum() == n_ctrl + 9
    ctrl_mean = a.X[(a.obs.perturbation == "control").to_numpy()].mean(0)
    for pert in perts:
        ref = linear.predict(sim_exp, [(pert, "ctx0")], n_cells=9).X
        got = a.X[(a.obs.perturbation == pert).to_numpy()]
        np.testing.assert_array_equal(got, ref)
        row = res.summary.set_index("perturbation").loc[pert]
        delta = ref.mean(0, dtype=np.float64) - ctrl_mean
        assert row.effect_l2 == pytest.approx(np.linalg.norm(delta), rel=1e-4)
        assert row.n_genes_changed == int((np.abs(delta) > 0.5).sum())
        top = np.asarray(a.var_names)[np.argmax(delta)]
        assert row.top_up.split(";")[0] == top


def test_atlas_interrupted_leaves_no_file(tmp_path, sim_exp, linear, monkeypatch):
    calls = []
    real_predict = linear.predict

    def failing(*args, **kwargs):
        calls.append(kwargs.pop("prompt"))
        if len(calls) == 3:
            raise RuntimeError("interrupted")
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(linear, "predict", failing)
    with pytest.raises(RuntimeError, match="interrupted"):
        predict_atlas(linear, sim_exp, linear.vocabulary, None, 5, tmp_path / "a.h5ad",
                      batch_bytes=1, show_progress=False, prompt="p")
    assert list(tmp_path.iterdir()) == []
    # one condition per call at this budget, and extra keyword arguments reach predict
    assert calls == ["p"] * 3


def test_atlas_refuses_context_without_controls(tmp_path, sim_exp, linear):
    with pytest.raises(InputError, match="ctx9"):
        predict_atlas(linear, sim_exp, linear.vocabulary, ["ctx9"], 5, tmp_path / "a.h5ad")
    assert list(tmp_path.iterdir()) == []


def test_parse_names(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("B\nA\n\nB\n")
    assert parse_names("all", ["X", "Y"], "perturbations") == ["X", "Y"]
    assert parse_names(f"@{f}", [], "perturbations") == ["B", "A"]
    assert parse_names("A, C", [], "perturbations") == ["A", "C"]
    with pytest.raises(InputError, match="--perturbations"):
        parse_names(" , ", [], "perturbations")


def _rss(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_atlas_memory_bounded_for_200_by_10_grid(tmp_path):
    """Peak RSS growth while writing a 200 x 10 grid stays far below the grid's size."""
    sim = simulate(n_genes=100, n_singles=2, n_combos=0, n_contexts=10, n_batches=1,
                   cells_per_condition=10, control_cells=40, seed=3)
    exp = read_experiment(sim, "perturbation", "control", context_key="context")
    model = get_model("context_mean").fit(exp)
    perts = [f"P{i:03d}" for i in range(200)]
    n_cells, budget = 50, 1 << 20
    grid_bytes = 200 * 10 * n_cells * exp.n_genes * 4  # 40 MB of X alone
    bound = 24 << 20
    # warm-up: lazy imports and caches are not part of the atlas's memory
    predict_atlas(model, exp, perts[:2], None, 1, tmp_path / "w.h5ad", show_progress=False)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to now
    except OSError:
        pytest.skip("cannot reset the peak RSS here")
    before = _rss("VmRSS")
    predict_atlas(model, exp, perts, None, n_cells, tmp_path / "a.h5ad", batch_bytes=budget,
                  show_progress=False)
    peak = _rss("VmHWM") - before
    assert ad.read_h5ad(tmp_path / "a.h5ad", backed="r").n_obs == 200 * 10 * n_cells
    assert peak < bound < grid_bytes, (peak, bound, grid_bytes)
    # the bound is one that holding the whole grid in memory (plain predict) exceeds
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss("VmRSS")
    whole = model.predict(exp, [(p, c) for c in exp.context_names() for p in perts], n_cells)
    assert _rss("VmHWM") - before > bound
    del whole
