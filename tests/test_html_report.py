"""The HTML report: content from a small benchmark, and the page as a real browser renders it."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from perturbcast.benchmark import run_benchmark
from perturbcast.cli import main
from perturbcast.data import make_split
from perturbcast.eval.html_report import discrimination_ranks, verdicts, write_html_report
from perturbcast.eval.report import write_benchmark_report
from perturbcast.eval.report_data import load_report_data

SECTIONS = ("verdict", "scores", "mean-change", "discrimination", "pca", "de-overlap",
            "training")
TINY_SET = {"max_steps": 12, "dim": 16, "depth": 1, "n_heads": 2, "set_size": 16, "n_sets": 4,
            "n_latent": 8, "base": "none", "shrink": 1}  # the network alone: one training
# after the page loads, count the images the browser could not decode
PROBE = ("<script>window.addEventListener('load',()=>{const b=[...document.images].filter("
         "i=>!(i.complete&&i.naturalWidth>0));document.body.setAttribute('data-broken',b.length);"
         "document.body.setAttribute('data-images',document.images.length)})</script>")


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory, sim_exp):
    split = make_split(sim_exp, "combo", n_folds=2, seed=0)
    res = run_benchmark(sim_exp, split, ["additive", "transition"], seed=0,
                        model_params={"transition": TINY_SET}, show_progress=False)
    out = tmp_path_factory.mktemp("bench")
    write_benchmark_report(res, out, "tiny benchmark")
    split.to_json(out / "split.json")
    write_html_report(out, res.report_data)
    return out


def _images(page: str) -> list[str]:
    return re.findall(r'<img[^>]*src="([^"]+)"', page)


def test_report_is_self_contained(bench_dir):
    page = (bench_dir / "report.html").read_text()
    for s in SECTIONS:
        assert f'<section id="{s}">' in page
    srcs = _images(page)
    assert len(srcs) == 6  # scores, mean change, ranks, PCA, DE overlap, training curves
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.size[0] > 100 and img.size[1] > 100
    assert not re.search(r'(href|src)="(?!data:|#)', page)  # nothing outside the file
    assert "<link" not in page and "http" not in page
    assert "transition: VCC score" in page and "one seed only" in page


def test_report_data_holds_changes_cells_and_curves(bench_dir, sim_exp):
    data = load_report_data(bench_dir)
    assert data["pred_change"].shape == (len(data["change_keys"]), sim_exp.n_genes)
    assert data["real_change"].shape == (len(data["real_keys"]), sim_exp.n_genes)
    assert set(data["change_keys"][:, 0]) == {"cell_mean", "additive", "transition"}
    assert {"real", "additive", "transition"} <= set(data["cell_keys"][:, 0])
    assert data["cells"].shape[0] == data["cell_sizes"].sum()
    assert set(data["curves"]) == {"transition"}
    assert all(len(v) >= 1 for v in data["curves"]["transition"].values())
    # the real change recorded is the mean of perturbed minus control cells of that context
    fold, ctx, pert = data["real_keys"][0]
    x = sim_exp.rows(np.flatnonzero((sim_exp.contexts == ctx) & (sim_exp.perturbations == pert)))
    c = sim_exp.rows(np.flatnonzero((sim_exp.contexts == ctx) & sim_exp.is_control))
    np.testing.assert_allclose(data["real_change"][0], np.asarray(x.mean(0) - c.mean(0)).ravel(),
                               atol=1e-5)


def test_verdict_uses_the_seed_spread():
    summary = pd.DataFrame({"model": ["cell_mean", "additive", "flow"], "score": [0.0, 0.2, 0.3],
                            "pearson_delta": [0.3, 0.6, 0.7]})
    assert "one seed only" in verdicts(summary, "additive")[0]
    assert "one seed only" in verdicts(summary.assign(n_seeds=1, score_sd=np.nan), "additive")[0]
    summary = summary.assign(n_seeds=[1, 1, 3])
    wide = summary.assign(score_sd=[0.0, 0.1, 0.1])
    assert "within the seed spread" in verdicts(wide, "additive")[0]
    narrow = summary.assign(score_sd=[0.0, 0.01, 0.01])
    assert "beats additive" in verdicts(narrow, "additive")[0]
    worse = narrow.assign(score=[0.0, 0.3, 0.2])
    assert "worse than additive" in verdicts(worse, "additive")[0]


def test_discrimination_rank_from_score():
    per = pd.DataFrame({"model": ["m"] * 4, "fold": ["f"] * 4, "context": ["c"] * 4,
                        "perturbation": list("abcd"),
                        "discrimination_score_l1": [1.0, 0.75, 0.5, 0.0]})
    assert discrimination_ranks(per).loc["m"].tolist() == [1, 2, 3, 5]


def test_report_command(bench_dir, tmp_path, capsys):
    target = tmp_path / "copy"
    shutil.copytree(bench_dir, target)
    (target / "report.html").unlink()
    with pytest.raises(SystemExit) as e:
        main(["report", str(target)])
    assert e.value.code in (0, None)
    assert (target / "report.html").read_text() == (bench_dir / "report.html").read_text()
    with pytest.raises(SystemExit) as e:
        main(["report", str(tmp_path / "nothing")])
    assert e.value.code == 2
    assert "not a folder" in capsys.readouterr().err


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    return None


def test_report_renders_in_headless_chromium(bench_dir, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp_path / 'profile'}"]
    probe = tmp_path / "probe.html"
    probe.write_text((bench_dir / "report.html").read_text().replace("</body>", PROBE + "</body>"))
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-images="6"' in body and 'data-broken="0"' in body, body
    for s in SECTIONS:
        assert f'id="{s}"' in dom
    shot = bench_dir / "report_screenshot.png"
    subprocess.run([*flags, "--window-size=1200,4200", f"--screenshot={shot}",
                    (bench_dir / "report.html").as_uri()], capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("L"))
    assert img.shape == (4200, 1200)
    assert (img < 128).mean() > 0.01  # something is drawn, not a blank page
