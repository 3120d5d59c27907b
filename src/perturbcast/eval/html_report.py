"""One self-contained HTML page from a benchmark or demo folder (images inlined, CSS inline).

Reads ``summary.csv``, ``per_perturbation.csv``, ``split.json`` and ``report_data.npz`` (when
present) and writes ``report.html``: the metric table with each model against the best
baseline and a verdict in plain words, predicted vs real mean changes, discrimination ranks,
a PCA of real and predicted cells, DE overlap bars and the training curves of learned models.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..utils import atomic_path
from . import report_plots as plots
from .report_data import ReportData, load_report_data

REPORT_NAME = "report.html"
TABLE_COLUMNS = ("score", "pearson_delta", "discrimination_score_l1", "overlap_at_N", "mae")
MAX_PANELS = 4
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222;
padding:0 1em}h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{padding:.25em .7em;text-align:right;
border-bottom:1px solid #eee}td:first-child,th:first-child{text-align:left}
.best{background:#fdf0f2}.learned{font-weight:600}.note{color:#666;font-size:.9em}
.verdict{background:#f4f7fb;border-left:4px solid #4477aa;padding:.5em 1em}
img{max-width:100%;height:auto}"""


def _baselines() -> tuple[str, ...]:
    from ..models import BASELINES

    return BASELINES


def best_baseline(summary: pd.DataFrame) -> str | None:
    """The best baseline of a summary table (same rule as the benchmark's table)."""
    from ..benchmark import BenchmarkResult

    return BenchmarkResult(summary, pd.DataFrame(), {}).best_baseline()


def verdicts(summary: pd.DataFrame, best: str | None,
             fits: pd.DataFrame | None = None) -> list[str]:
    """One plain sentence per learned model against its best baseline (the one with the same
    gene table, :func:`perturbcast.verdict.compare_to_baselines`): better, worse or within the
    seed spread (|difference| <= the sd of the model's score over seeds); with ``fits``, a
    model above its baseline whose chosen base was not run says so."""
    from ..verdict import bases_not_run, compare_to_baselines, side_note

    rows = summary.set_index("model")
    if best is None:
        return ["No baseline was run, so no model can be judged against one."]
    comp = compare_to_baselines(summary, _baselines())
    if comp.empty:
        b = rows.loc[best]
        return [f"Only baselines were run; the best is {best} (VCC score {b.score:.3f} against "
                f"cell_mean, pearson_delta {b.pearson_delta:.3f})."]
    out = []
    for c in comp.to_dict("records"):
        m, b, diff = c["model"], c["baseline"], c["difference"]
        r, rb = rows.loc[m], rows.loc[b]
        head = (f"{m}: VCC score {c['score']:.3f} against {c['baseline_score']:.3f} for the best "
                f"baseline {b} (pearson_delta {r.pearson_delta:.3f} vs {rb.pearson_delta:.3f}).")
        if c["exceeds_spread"] is None:
            word = "higher" if diff > 0 else "lower" if diff < 0 else "equal"
            tail = (f"Its score is {word} ({diff:+.3f}), from one seed only: the spread is "
                    f"unknown (run with --seeds to measure it).")
        elif not c["exceeds_spread"]:
            tail = (f"The difference ({diff:+.3f}) is within the seed spread "
                    f"(±{c['score_sd']:.3f}): no evidence it beats {b}.")
        elif diff > 0:
            tail = f"It beats {b} by more than the seed spread (±{c['score_sd']:.3f})."
        else:
            tail = f"It is worse than {b} by more than the seed spread (±{c['score_sd']:.3f})."
        tail += side_note(summary, c) + (bases_not_run(summary, fits, m) if diff > 0 else "")
        if c["score"] == 0 and c["baseline_score"] == 0:
            tail += " Neither beats cell_mean on the VCC score."
        out.append(f"{head} {tail}")
    return out


def _table(summary: pd.DataFrame, best: str | None) -> str:
    cols = [c for c in TABLE_COLUMNS if c in summary.columns]
    base = summary.set_index("model").loc[best] if best else None
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["model", *cols, "score vs best"])
    body = []
    for r in summary.to_dict("records"):
        cells = []
        for c in cols:
            sd = r.get(f"{c}_sd")
            txt = f"{r[c]:.4f}" + (f" ± {sd:.4f}" if sd is not None and np.isfinite(sd) else "")
            cells.append(f"<td>{txt}</td>")
        diff = "" if base is None else f"{r['score'] - base.score:+.4f}"
        cls = "best" if r["model"] == best else "" if r["model"] in _baselines() else "learned"
        name = html.escape(str(r["model"])) + (" ★" if r["model"] == best else "")
        body.append(f'<tr class="{cls}"><td>{name}</td>{"".join(cells)}<td>{diff}</td></tr>')
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def discrimination_ranks(per_pert: pd.DataFrame) -> pd.DataFrame:
    """Rank (1 = best) of each perturbation's own real effect among all real effects.

    Returns a DataFrame, rows: models, columns: perturbations (with the context when several).
    """
    df = per_pert.dropna(subset=["discrimination_score_l1"]).copy()
    n = df.groupby(["model", "fold", "context"]).perturbation.transform("size")
    df["rank"] = np.round((1.0 - df.discrimination_score_l1) * n) + 1
    several = df.context.astype(str).nunique() > 1
    df["column"] = df.perturbation.astype(str) + (
        " (" + df.context.astype(str) + ")" if several else "")
    table = df.pivot_table(index="model", columns="column", values="rank", aggfunc="mean",
                           sort=False)
    return table.reindex(list(dict.fromkeys(df.model)))


def _mean_change_section(data: dict, models: list[str]) -> str:
    unit = tuple(data["cell_unit"])
    real = {k[2]: v for k, v in zip(map(tuple, data["real_keys"]), data["real_change"],
                                    strict=True) if k[:2] == unit}
    pred = {(k[0], k[3]): v for k, v in zip(map(tuple, data["change_keys"]),
                                            data["pred_change"], strict=True)
            if k[1:3] == unit and k[0] in models}
    perts = sorted(real, key=lambda p: -float(np.abs(real[p]).sum()))[:MAX_PANELS]
    fig = plots.mean_change_figure(real, pred, models, perts, data["genes"])
    return (f"<p>Fold {html.escape(unit[0])}, context {html.escape(unit[1])}: the "
            f"{len(perts)} perturbations with the largest real change. Each dot is a gene "
            "(log1p mean of perturbed cells minus control cells); the grey line is a perfect "
            "prediction; the genes that change most are named.</p>"
            + _img(fig, "predicted vs real mean change"))


def _pca_section(data: dict, models: list[str], control: str) -> str:
    keys = [tuple(k) for k in data["cell_keys"]]
    blocks = np.split(data["cells"], np.cumsum(data["cell_sizes"])[:-1])
    cells = dict(zip(keys, blocks, strict=True))
    perts = [g for s, g in keys if s == "real" and g != control][:MAX_PANELS]
    if not perts:
        return "<p class='note'>No cells were kept.</p>"
    fig = plots.pca_figure(cells, control, perts, models)
    return ("<p>Principal components of the real cells (control and perturbed) of the first "
            "fold and context; predicted cells projected on the same axes. A good model's "
            "cells lie on the real perturbed cells, not on the controls.</p>"
            + _img(fig, "PCA of predicted and real cells"))


def render_html(directory: str | Path) -> str:
    """The report page of a benchmark folder as one HTML string."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory} is not a folder; pass the output folder of "
                         "`perturbcast benchmark` or `perturbcast demo`.")
    if not (directory / "summary.csv").exists():
        raise InputError(f"{directory} has no summary.csv; pass the output folder of "
                         "`perturbcast benchmark` or `perturbcast demo`.")
    summary = pd.read_csv(directory / "summary.csv")
    if not {"model", "score"} <= set(summary.columns):
        raise InputError(f"{directory}/summary.csv lacks the model and score columns; "
                         "rerun `perturbcast benchmark` to write it.")
    per_path = directory / "per_perturbation.csv"
    per_pert = pd.read_csv(per_path) if per_path.exists() else None
    fits = pd.read_csv(directory / "fits.csv") if (directory / "fits.csv").exists() else None
    data = load_report_data(directory)
    best = best_baseline(summary)
    learned = [m for m in summary.model if m not in _baselines()]
    shown = [*learned, *([best] if best else [])][:MAX_PANELS]
    md = directory / "report.md"
    title = (md.read_text().splitlines()[0].lstrip("# ").strip() if md.exists()
             else f"perturbcast report: {directory.name}")
    parts = [f"<h1>{html.escape(title)}</h1>",
             '<section id="verdict"><h2>Verdict</h2><div class="verdict">'
             + "".join(f"<p>{html.escape(v)}</p>" for v in verdicts(summary, best, fits))
             + "</div></section>",
             '<section id="scores"><h2>Scores against the best baseline</h2>'
             "<p>VCC score: mae, discrimination_score_l1 and overlap_at_N, each normalised "
             "against the cell_mean baseline, clipped at 0 and averaged (0 = no better than "
             "cell_mean). ★ best baseline; learned models in bold; ± is the sd over seeds.</p>"
             + _table(summary, best) + _img(plots.scores_figure(summary, best), "scores")
             + "</section>"]
    missing = "<p class='note'>Not recorded in this folder (rerun the benchmark).</p>"
    parts.append('<section id="mean-change"><h2>Predicted vs real mean change</h2>'
                 + (_mean_change_section(data, shown) if data and len(data["real_keys"])
                    else missing) + "</section>")
    rank_html = missing
    if per_pert is not None and "discrimination_score_l1" in per_pert:
        rank_html = ("<p>For each perturbation, the rank of its own real effect among all real "
                     "effects, by L1 distance to the predicted effect (1 = the prediction is "
                     "closest to the right perturbation).</p>"
                     + _img(plots.discrimination_figure(discrimination_ranks(per_pert)),
                            "discrimination rank"))
    parts.append(f'<section id="discrimination"><h2>Discrimination rank</h2>{rank_html}'
                 "</section>")
    parts.append('<section id="pca"><h2>Predicted and real cells (PCA)</h2>'
                 + (_pca_section(data, shown, str(data["control"]))
                    if data and len(data["cell_keys"]) else missing) + "</section>")
    parts.append('<section id="de-overlap"><h2>Differential expression overlap</h2><p>Share '
                 "of the real top-k DE genes that the prediction also calls DE (N = the real "
                 "number of significant genes).</p>"
                 + _img(plots.overlap_figure(summary), "DE overlap") + "</section>")
    curves = data["curves"] if data else {}
    parts.append('<section id="training"><h2>Training curves</h2>' + (
        _img(plots.curves_figure(curves), "training curves") if curves else
        "<p class='note'>No learned model was trained in this run.</p>") + "</section>")
    split = directory / "split.json"
    if split.exists():
        folds = json.loads(split.read_text()).get("folds", [])
        parts.append(f"<p class='note'>Split: {len(folds)} fold(s), from split.json.</p>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>'
            f"{html.escape(title)}</title><style>{CSS}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")


def write_html_report(directory: str | Path, report_data: ReportData | None = None) -> Path:
    """Save ``report_data`` (when given) into ``directory``, then write ``report.html`` there."""
    directory = Path(directory)
    if report_data is not None and report_data.genes is not None:
        report_data.save(directory)
    page = render_html(directory)
    path = directory / REPORT_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
