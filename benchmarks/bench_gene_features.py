"""How well each gene-feature table predicts the effect of perturbing a gene never seen in training.

For every single genetic perturbation of a real dataset, its mean change (perturbed mean minus
the control mean of its context, log1p) is predicted from its target gene's feature vector by
ridge regression fitted on the other perturbations (leave one perturbation out; the penalty is
chosen by an exact inner leave-one-out on the rest). The same folds for every table. Reported per
table: coverage (share of targets with a row), pearson_delta (mean over held-out perturbations of
the correlation of predicted and real changes) and relative error (squared error over that of
predicting the mean training change, which is the "mean" row). Tables:

- ``mean``: no features (every held-out perturbation gets the mean training change);
- ``train``: PCs of training deltas + control expression (measured target genes only);
- ``gene2word``: literature vectors; ``go``: GO annotation vectors (this project's builder);
- ``gene2word+go``: both, joined side by side;
- ``gene2word<go``: gene2word, with genes it lacks filled in from their GO vectors.

    python benchmarks/bench_gene_features.py [--tasks papalexi21_unseen,norman19_combo]

Needs ../shared/data and ../shared/priors. Ends with one key=value line.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from perturbcast.datasets.priors import fill_missing, go_gene_vectors_from_folder, join_tables
from perturbcast.datasets.tasks import load_task
from perturbcast.models.perturbation_features import (
    PerturbationFeatures,
    load_embedding_table,
    training_gene_features,
)

PRIORS = Path(__file__).resolve().parents[2] / "shared/priors"
ALPHAS = tuple(10.0 ** np.arange(-1, 6))


def single_deltas(exp):
    """Single genetic perturbations with >= 10 cells, their mean change (n, genes) in their
    first context, and the control cells."""
    keys, means = exp.group_means(("perturbation", "context"))
    ctrl = keys.perturbation == exp.control
    ctrl_mean = dict(zip(keys.context[ctrl], means[ctrl.to_numpy()], strict=True))
    single = keys.perturbation.map(lambda p: len(exp.components(p)) == 1) & ~ctrl
    keep = keys[single & (keys.n_cells >= 10)].drop_duplicates("perturbation")
    names = np.array([exp.components(p)[0] for p in keep.perturbation])
    deltas = np.stack([means[i] - ctrl_mean[c] for i, c in zip(keep.index, keep.context,
                                                               strict=True)])
    return names, deltas, exp.rows(np.flatnonzero(exp.is_control))


def ridge_loo(f: np.ndarray, y: np.ndarray) -> float:
    """Penalty with the smallest exact leave-one-out error (centred f, y), from the kernel
    form: residual_i = (G^-1 y)_i / (G^-1)_ii with G = f f^T + big * 1 1^T + alpha I (the
    large constant term is the nearly unpenalised intercept)."""
    k = f @ f.T
    k = k + 1e3 * (np.trace(k) / len(k) + 1.0)
    best, best_err = ALPHAS[0], np.inf
    for a in ALPHAS:
        g_inv = np.linalg.inv(k + a * np.eye(len(k)))
        err = (((g_inv @ y) / np.diag(g_inv)[:, None]) ** 2).sum()
        if err < best_err:
            best, best_err = a, err
    return best


def predict(f_tr, y_tr, f_te):
    mu_f, mu_y = f_tr.mean(0), y_tr.mean(0)
    ft, yt = f_tr - mu_f, y_tr - mu_y
    if ft.shape[1] == 0 or not np.any(ft):
        return np.broadcast_to(mu_y, (len(f_te), y_tr.shape[1]))
    a = ridge_loo(ft, yt)
    w = np.linalg.solve(ft.T @ ft + a * np.eye(ft.shape[1]), ft.T @ yt)
    return mu_y + (f_te - mu_f) @ w


def lookup(table, names):
    """Rows of ``names`` (matched as the set models match them), scaled by the table's spread,
    and which names have one."""
    t_names, vecs = table
    features = PerturbationFeatures([], t_names, vecs, "+", "control")
    out = np.zeros((len(names), vecs.shape[1]), np.float32)
    has = np.zeros(len(names), bool)
    for i, n in enumerate(names):
        r = features.feature_row(n)
        if r is not None:
            out[i], has[i] = vecs[r], True
    return out / (vecs.std() + 1e-12), has


def evaluate(task: str, tables: dict, k_folds: int = 0) -> dict[str, dict[str, float]]:
    exp, _ = load_task(task)
    names, deltas, x_ctrl = single_deltas(exp)
    k_folds = k_folds or len(names)  # 0: leave one perturbation out
    folds = np.arange(len(names)) % k_folds
    np.random.default_rng(0).shuffle(folds)
    res = {}
    for tname in ["mean", "train", *tables]:
        pred = np.zeros_like(deltas)
        covered = []
        for k in range(k_folds):
            tr, te = folds != k, folds == k
            if tname == "mean":
                f, has = np.zeros((len(names), 0), np.float32), np.ones(len(names), bool)
            elif tname == "train":
                feats = training_gene_features(exp.genes, deltas[tr], x_ctrl[:5000])
                f, has = lookup((exp.genes.astype(str), feats), names)
            else:
                f, has = lookup(tables[tname], names)
            covered.append(has[te])
            pred[te] = predict(f[tr], deltas[tr], f[te])
        r = [np.corrcoef(p, d)[0, 1] for p, d in zip(pred, deltas, strict=True)]
        res[tname] = {"coverage": float(np.concatenate(covered).mean()),
                      "pearson_delta": float(np.nanmean(r)),
                      "sq_err": float(((pred - deltas) ** 2).sum())}
    base = res["mean"]["sq_err"]
    for v in res.values():
        v["rel_err"] = v.pop("sq_err") / base
    print(f"\n{task}: {len(names)} single perturbations, {exp.n_genes} genes, {k_folds} folds")
    print(f"{'table':<14}{'coverage':>10}{'pearson_delta':>15}{'rel_err':>10}")
    for t, v in res.items():
        print(f"{t:<14}{v['coverage']:>10.3f}{v['pearson_delta']:>15.4f}{v['rel_err']:>10.4f}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="papalexi21_unseen,norman19_combo")
    ap.add_argument("--go-dim", type=int, default=64)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    go = go_gene_vectors_from_folder(PRIORS / "orghs_go", n_components=args.go_dim)
    go_s = time.perf_counter() - t0
    g2w = load_embedding_table(PRIORS / "gene2word/gene2word_lsi125_human_pc.npz")
    tables = {"gene2word": g2w, "go": go, "gene2word+go": join_tables([g2w, go]),
              "gene2word<go": fill_missing(g2w, go)}
    figures = {"go_build_s": f"{go_s:.1f}"}
    for task in args.tasks.split(","):
        for t, v in evaluate(task, tables).items():
            figures[f"{task}_{t}_pearson_delta"] = f"{v['pearson_delta']:.4f}"
            figures[f"{task}_{t}_rel_err"] = f"{v['rel_err']:.4f}"
    figures["total_s"] = f"{time.perf_counter() - t0:.1f}"
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
