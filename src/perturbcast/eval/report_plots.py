"""Figures of the HTML report, each returned as a base64 PNG string (matplotlib, Agg)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd

REAL_COLOUR, CONTROL_COLOUR = "#222222", "#bbbbbb"
PALETTE = ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#999933")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_base64_png(fig) -> str:
    """Render ``fig`` to PNG, close it and return the bytes base64-encoded."""
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def scores_figure(summary: pd.DataFrame, best: str | None) -> str:
    """Horizontal bars of the VCC score and three headline metrics, one bar per model."""
    plt = _plt()
    cols = [c for c in ("score", "pearson_delta", "discrimination_score_l1", "overlap_at_N")
            if c in summary.columns]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.0 * len(cols), 0.35 * len(summary) + 1.2),
                             sharey=True, squeeze=False)
    models = summary.model.tolist()
    colours = [PALETTE[1] if m == best else PALETTE[0] for m in models]
    for ax, c in zip(axes[0], cols, strict=True):
        sd = summary.get(f"{c}_sd")
        ax.barh(models, summary[c].fillna(0.0), color=colours,
                xerr=None if sd is None else sd.fillna(0.0), capsize=2)
        ax.set_title(c, fontsize=9)
        ax.axvline(0, color="black", lw=0.6)
        ax.tick_params(labelsize=8)
    axes[0][0].invert_yaxis()
    return to_base64_png(fig)


def mean_change_figure(real: dict, pred: dict, models: list[str], perts: list[str],
                       genes: np.ndarray, n_labels: int = 4) -> str:
    """Scatter of predicted vs real mean change, rows: models, columns: perturbations.

    Parameters
    ----------
    real : perturbation -> real mean change, shape (n_genes,)
    pred : (model, perturbation) -> predicted mean change, shape (n_genes,)
    """
    plt = _plt()
    fig, axes = plt.subplots(len(models), len(perts), figsize=(2.6 * len(perts),
                             2.5 * len(models)), squeeze=False)
    for i, m in enumerate(models):
        for j, p in enumerate(perts):
            ax, r, q = axes[i][j], real[p], pred.get((m, p))
            ax.tick_params(labelsize=7)
            if q is None:
                ax.set_axis_off()
                continue
            lim = float(np.nanmax(np.abs(np.r_[r, q, 1e-6])))
            ax.plot([-lim, lim], [-lim, lim], color=CONTROL_COLOUR, lw=0.8)
            ax.scatter(r, q, s=5, color=PALETTE[i % len(PALETTE)], alpha=0.6, lw=0)
            for g in np.argsort(-np.abs(r))[:n_labels]:
                ax.annotate(str(genes[g]), (r[g], q[g]), fontsize=6, alpha=0.9)
            r_ = np.corrcoef(r, q)[0, 1] if np.std(r) > 0 and np.std(q) > 0 else np.nan
            ax.set_title(f"{p}\n{m}  (r = {r_:.2f})", fontsize=8)
            if j == 0:
                ax.set_ylabel("predicted change", fontsize=7)
            if i == len(models) - 1:
                ax.set_xlabel("real change", fontsize=7)
    fig.tight_layout()
    return to_base64_png(fig)


def discrimination_figure(ranks: pd.DataFrame) -> str:
    """Heatmap of each perturbation's discrimination rank (1 = its own real effect is closest).

    Parameters
    ----------
    ranks : DataFrame, rows: models, columns: perturbations, values: rank (1 = best)
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(min(0.35 * ranks.shape[1] + 2.5, 16),
                                    0.4 * ranks.shape[0] + 1.6))
    vals = ranks.to_numpy(float)
    im = ax.imshow(vals, aspect="auto", cmap="viridis_r", vmin=1)
    ax.set_yticks(range(ranks.shape[0]), ranks.index, fontsize=8)
    ax.set_xticks(range(ranks.shape[1]), ranks.columns, fontsize=6, rotation=90)
    if vals.size <= 400:
        for (i, j), v in np.ndenumerate(vals):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=5, color="white")
    fig.colorbar(im, ax=ax, label="rank (1 = best)")
    return to_base64_png(fig)


def pca_figure(cells: dict[tuple[str, str], np.ndarray], control: str, perts: list[str],
               models: list[str]) -> str:
    """PCA (fit on the real cells) of real and predicted cells, one panel per perturbation.

    Parameters
    ----------
    cells : (source, group) -> cells, shape (n_cells, n_genes); source 'real' or a model
    """
    plt = _plt()
    real_all = np.concatenate([v for (s, _), v in cells.items() if s == "real"])
    mu = real_all.mean(0)
    _, _, vt = np.linalg.svd(real_all - mu, full_matrices=False)
    comp = vt[:2].T
    fig, axes = plt.subplots(1, len(perts), figsize=(3.0 * len(perts), 3.0), squeeze=False)
    for ax, p in zip(axes[0], perts, strict=True):
        for (src, g), colour, label in [(("real", control), CONTROL_COLOUR, "real control"),
                                        (("real", p), REAL_COLOUR, "real perturbed")] + [
                ((m, p), PALETTE[k % len(PALETTE)], m) for k, m in enumerate(models)]:
            if (src, g) in cells:
                z = (cells[(src, g)] - mu) @ comp
                ax.scatter(z[:, 0], z[:, 1], s=6, color=colour, alpha=0.6, lw=0, label=label)
        ax.set_title(p, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("PC1", fontsize=7)
    axes[0][0].set_ylabel("PC2", fontsize=7)
    axes[0][-1].legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    return to_base64_png(fig)


def overlap_figure(summary: pd.DataFrame) -> str:
    """Grouped bars of the DE overlap at N, 50, 100, 200, 500 genes, one group per model."""
    plt = _plt()
    cols = [c for c in ("overlap_at_N", "overlap_at_50", "overlap_at_100", "overlap_at_200",
                        "overlap_at_500") if c in summary.columns]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(summary) + 1.5), 3.0))
    width = 0.8 / max(len(cols), 1)
    x = np.arange(len(summary))
    for k, c in enumerate(cols):
        sd = summary.get(f"{c}_sd")
        ax.bar(x + k * width, summary[c].fillna(0.0), width, label=c.replace("overlap_at_", "top "),
               color=PALETTE[k % len(PALETTE)], yerr=None if sd is None else sd.fillna(0.0))
    ax.set_xticks(x + width * (len(cols) - 1) / 2, summary.model, fontsize=8, rotation=30)
    ax.set_ylabel("overlap of DE genes", fontsize=8)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    return to_base64_png(fig)


def curves_figure(curves: dict[str, dict[str, list[float]]]) -> str:
    """Validation loss per epoch of each learned model, one line per fold."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(3.4 * len(curves), 2.8), squeeze=False)
    for ax, (m, by_fold) in zip(axes[0], curves.items(), strict=True):
        for k, (fold, losses) in enumerate(by_fold.items()):
            ax.plot(np.arange(1, len(losses) + 1), losses, marker="o", ms=2,
                    color=PALETTE[k % len(PALETTE)], label=fold)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel("validation loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return to_base64_png(fig)
