"""Embeddings of the in-context model against PCA on the simulator: contexts, batches.

A simulated screen with several contexts (cell types / lines) and several batches (per-gene
log-scale shifts of sd ``--batch-effect``, cells assigned to batches at random, so a batch
carries no biology) is used to fit the incontext model at a small CPU budget; every cell is
embedded with ``model.embed`` (sets of its own context, as ``perturbcast embed`` does) and,
since such sets hand the context to every cell in them, also in sets drawn from all cells
(``mixed_sets``). An untrained network of the same shape shows what training adds.
Compared with PCA of the log1p data at the same dimension and at 50:

- context recovery: 5-fold kNN (k=15) accuracy of the context label (chance 1 / n_contexts);
- perturbation recovery: the same for the perturbation label (controls included);
- batch mixing: mean normalised entropy of the batch labels of each cell's 15 nearest
  neighbours, in [0, 1] (1 = as mixed as the batch count allows; see
  :func:`embedding_scores.batch_mixing`), and kNN batch accuracy (chance 1 / n_batches).

For Kang 2018 cell types: ``bench_incontext_kang.py --folds 0``. Ends with one key=value line.

    OMP_NUM_THREADS=1 python benchmarks/bench_incontext_embed.py [--steps 150]
        [--batch-effect 0.5] [--params '{"finetune_steps": 100}']
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import replace

import numpy as np
from bench_incontext_kang import SMALL
from embedding_scores import batch_mixing, knn_accuracy, pca

from perturbcast.data import read_experiment
from perturbcast.datasets import simulate
from perturbcast.models import get_model


def scores(emb: np.ndarray, ctx: np.ndarray, pert: np.ndarray, batch: np.ndarray
           ) -> dict[str, float]:
    return {"context_knn": knn_accuracy(emb, ctx), "pert_knn": knn_accuracy(emb, pert),
            "batch_mixing": batch_mixing(emb, batch), "batch_knn": knn_accuracy(emb, batch)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150, help="pretraining = fine-tuning steps")
    ap.add_argument("--batch-effect", type=float, default=0.5)
    ap.add_argument("--params", default="{}", help="JSON incontext parameters")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    adata = simulate(n_genes=200, n_singles=6, n_combos=0, n_contexts=4, n_batches=3,
                     batch_effect=args.batch_effect, cells_per_condition=40, control_cells=120,
                     seed=args.seed)
    exp = read_experiment(adata, "perturbation", "control", context_key="context",
                          batch_key="batch")
    ctx, pert = exp.contexts.astype(str), exp.perturbations.astype(str)
    batch = exp.batches.astype(str)
    params = {**SMALL, "pretrain_steps": args.steps, "finetune_steps": args.steps,
              **json.loads(args.params)}
    t0 = time.perf_counter()
    model = get_model("incontext", seed=args.seed, **params).fit(exp)
    fit_s = time.perf_counter() - t0
    untrained = get_model("incontext", seed=args.seed, **{**params, "pretrain_steps": 0,
                                                          "finetune_steps": 0}).fit(exp)
    t1 = time.perf_counter()
    emb = model.embed(exp)
    embed_s = time.perf_counter() - t1
    mixed_exp = replace(exp, context_key=None)
    x = exp.rows(np.arange(exp.n_cells))
    embeddings = {"incontext": emb, "incontext_mixed_sets": model.embed(mixed_exp),
                  "untrained": untrained.embed(exp),
                  "untrained_mixed_sets": untrained.embed(mixed_exp),
                  f"pca{emb.shape[1]}": pca(x, emb.shape[1]), "pca50": pca(x, 50)}
    figures: dict[str, object] = {
        "cells": exp.n_cells, "contexts": len(set(ctx)), "batches": len(set(batch)),
        "batch_effect": args.batch_effect, "dim": emb.shape[1], "fit_s": round(fit_s, 1),
        "embed_cells_per_s": round(exp.n_cells / embed_s, 1)}
    print(f"{'embedding':24s} context_knn pert_knn batch_mixing batch_knn")
    for name, e in embeddings.items():
        s = scores(e, ctx, pert, batch)
        print(f"{name:24s} " + " ".join(f"{v:11.3f}" for v in s.values()), flush=True)
        figures.update({f"{name}_{k}": round(v, 3) for k, v in s.items()})
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
