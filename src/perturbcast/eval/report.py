"""Result tables (rich), CSV/JSON outputs and a plot a person wants to look at."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from ..utils import atomic_path

HEADLINE = ("score", "pearson_delta", "discrimination_score_l1", "overlap_at_N", "mae",
            "de_direction_match", "pearson_edistance")


def _fmt(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def summary_table(summary: pd.DataFrame, title: str, best: str | None = None,
                  columns=HEADLINE) -> Table:
    """A rich table of the headline metrics, one row per model; ``best`` is starred."""
    cols = [c for c in columns if c in summary.columns]
    table = Table(title=title, header_style="bold")
    table.add_column("model")
    for c in cols:
        table.add_column(c.replace("discrimination_score", "disc").replace("_", " "),
                         justify="right")
    for row in summary.to_dict("records"):
        name = row["model"] + (" *" if row["model"] == best else "")
        table.add_row(name, *[_fmt(row[c]) for c in cols])
    if best:
        table.caption = "* best baseline (highest VCC score vs cell_mean)"
    return table


def print_summary(summary: pd.DataFrame, title: str, best: str | None = None) -> None:
    Console().print(summary_table(summary, title, best))


def write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def plot_scores(summary: pd.DataFrame, path: Path, title: str) -> None:
    """Bar charts of the VCC score and three headline metrics per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in ("score", "pearson_delta", "discrimination_score_l1", "overlap_at_N")
            if c in summary.columns]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 3.2), sharey=True)
    axes = [axes] if len(cols) == 1 else axes
    models = summary.model.tolist()
    for ax, c in zip(axes, cols, strict=True):
        ax.barh(models, summary[c].fillna(0.0), color="#4477aa")
        ax.set_title(c, fontsize=9)
        ax.axvline(0, color="black", lw=0.6)
        ax.tick_params(labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_benchmark_report(result, out: Path, title: str, notes: list[str] | None = None) -> None:
    """summary.csv, per_perturbation.csv, scores.png and a short report.md into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(result.summary, out / "summary.csv")
    write_csv(result.per_perturbation, out / "per_perturbation.csv")
    plot_scores(result.summary, out / "scores.png", title)
    best = result.best_baseline()
    lines = [f"# {title}", "", *(notes or []), "",
             "Score = VCC score: each of mae, discrimination_score_l1 and overlap_at_N",
             "normalised against the cell_mean baseline, clipped at 0 and averaged.",
             "", f"Best baseline: **{best}**", "", "| model | " + " | ".join(HEADLINE) + " |",
             "|---" * (len(HEADLINE) + 1) + "|"]
    for row in result.summary.to_dict("records"):
        lines.append(f"| {row['model']} | " + " | ".join(_fmt(row.get(c)) for c in HEADLINE)
                     + " |")
    lines += ["", "![scores](scores.png)", "", "Seconds per model (fit + predict + evaluate):",
              ""] + [f"- {k}: {v:.2f}" for k, v in result.timings.items()]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
