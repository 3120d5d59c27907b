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
#: the columns of the printed table (fits 80 characters with mean and ± sd on two lines)
PRINTED = HEADLINE[:5]


def _fmt(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _cell(row: dict, col: str, sep: str = " ± ") -> str:
    """``mean ± sd`` when the model ran with several seeds, else the value alone."""
    sd = row.get(f"{col}_sd")
    if row.get("n_seeds", 1) > 1 and sd is not None and not math.isnan(sd):
        return f"{_fmt(row[col])}{sep}{_fmt(sd)}"
    return _fmt(row[col])


def seeds_note(summary: pd.DataFrame) -> str:
    """How the spread was measured, e.g. ``learned models: mean ± sd over 3 seeds``."""
    n = int(summary.n_seeds.max()) if "n_seeds" in summary else 1
    if n > 1:
        return (f"learned models: mean ± sd over {n} seeds; baselines fitted once "
                f"(deterministic fit, sd 0)")
    from ..models import BASELINES

    if "model" in summary and summary.model.isin(BASELINES).all():
        return "baselines only: a deterministic fit, run once (no seed spread to measure)"
    return "one seed per model (no spread measured; --seeds 0,1,2 measures it)"


def summary_table(summary: pd.DataFrame, title: str, best: str | None = None,
                  columns=PRINTED) -> Table:
    """A rich table of the headline metrics, one row per model; ``best`` is starred.

    Models run with several seeds show ``mean`` over ``± sd`` (over seeds) in each cell."""
    cols = [c for c in columns if c in summary.columns]
    table = Table(title=title, header_style="bold")
    table.add_column("model", no_wrap=True)
    for c in cols:
        table.add_column(c.replace("discrimination_score", "disc").replace("_", " "),
                         justify="right", no_wrap=True)
    for row in summary.to_dict("records"):
        name = row["model"] + (" *" if row["model"] == best else "")
        table.add_row(name, *[_cell(row, c, "\n± ") for c in cols])
    caption = [seeds_note(summary)] if "n_seeds" in summary else []
    if best:
        caption.insert(0, "* best baseline (highest VCC score vs cell_mean, same gene tables)")
    table.caption = "\n".join(caption) or None
    return table


def print_summary(summary: pd.DataFrame, title: str, best: str | None = None,
                  verdict: str | None = None) -> None:
    """Print the table, then the verdict line (if any) in bold."""
    console = Console()
    console.print(summary_table(summary, title, best))
    if verdict:
        console.print(f"[bold]{verdict}[/]", highlight=False)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def plot_scores(summary: pd.DataFrame, path: Path, title: str) -> None:
    """Bar charts of the VCC score and three headline metrics per model (± sd over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in ("score", "pearson_delta", "discrimination_score_l1", "overlap_at_N")
            if c in summary.columns]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 3.2), sharey=True)
    axes = [axes] if len(cols) == 1 else axes
    models = summary.model.tolist()
    for ax, c in zip(axes, cols, strict=True):
        sd = summary[f"{c}_sd"].fillna(0.0) if f"{c}_sd" in summary else None
        ax.barh(models, summary[c].fillna(0.0), xerr=sd, color="#4477aa", ecolor="black")
        ax.set_title(c, fontsize=9)
        ax.axvline(0, color="black", lw=0.6)
        ax.tick_params(labelsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_benchmark_report(result, out: Path, title: str, notes: list[str] | None = None) -> None:
    """summary.csv, per_perturbation.csv, fits.csv, scores.png and a short report.md into
    ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    write_csv(result.summary, out / "summary.csv")
    write_csv(result.per_perturbation, out / "per_perturbation.csv")
    write_csv(result.fits, out / "fits.csv")
    plot_scores(result.summary, out / "scores.png", title)
    best = result.best_baseline()
    lines = [f"# {title}", "", *(notes or []), "",
             "Score = VCC score: each of mae, discrimination_score_l1 and overlap_at_N",
             "normalised against the cell_mean baseline, clipped at 0 and averaged.",
             f"Cells: {seeds_note(result.summary)}. The best baseline is chosen among baselines",
             "that had the same gene table as the learned models, or that take none.",
             "", f"Best baseline: **{best}**", "", f"Verdict: **{result.verdict()}**", "",
             "| model | " + " | ".join(HEADLINE) + " | embeddings |",
             "|---" * (len(HEADLINE) + 2) + "|"]
    calibration = [f"- {c.line()}" for c in result.calibration()]
    for row in result.summary.to_dict("records"):
        table = row.get("embeddings")
        table = "" if table is None or (isinstance(table, float) and math.isnan(table)) else table
        lines.append(f"| {row['model']} | " + " | ".join(_cell(row, c) if c in row else "nan"
                                                         for c in HEADLINE) + f" | {table} |")
    if calibration:
        lines += ["", "Ensembles: does the members' spread rank which predictions are wrong?", "",
                  *calibration]
    lines += ["", "![scores](scores.png)", "",
              "Seconds per model (fit + predict + evaluate, all folds and seeds), and the mean "
              "fit per fold (fits.csv has each fit):", ""]
    fit_s = (result.fits.groupby("model").fit_s.mean() if len(result.fits) else pd.Series())
    lines += [f"- {k}: {v:.2f} (fit {fit_s.get(k, float('nan')):.2f} per fold)"
              for k, v in result.timings.items()]
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
