"""The in-context model on kang18_celltype: quality against baselines, embeddings against PCA.

Kang 2018 (PBMC, IFN-b): each fold holds out one cell type's stimulated cells; the incontext
model sees the stimulated and control cells of the other cell types as its prompt (STACK's
own setting). Needs ../shared/data (or PERTURBCAST_DATA). Then embeds every cell and compares
5-fold kNN (k=15) cell-type accuracy of the model's embeddings and of PCA at the same size.
Embedding in sets of one's own context leaks the cell type into the set, so it is also
measured with sets drawn from all cells (``knn_incontext_mixed_sets``).

    OMP_NUM_THREADS=1 python benchmarks/bench_incontext_kang.py [--folds 3 (0: embeddings only)]
        [--params '{"finetune_steps": 100}'] [--no-embed]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import replace

import numpy as np
from embedding_scores import knn_accuracy, pca

from perturbcast.benchmark import run_benchmark
from perturbcast.datasets.tasks import load_task
from perturbcast.eval.report import print_summary
from perturbcast.models import get_model

SMALL = dict(n_modules=16, dim=16, depth=2, n_heads=4, set_size=32, n_prompt=16, n_sets=4,
             pretrain_steps=30, finetune_steps=80, lr=3e-3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--folds", type=int, default=3,
                    help="first N cell-type folds (of 7); 0: embeddings only")
    ap.add_argument("--params", default="{}", help="JSON incontext parameters")
    ap.add_argument("--no-embed", action="store_true")
    args = ap.parse_args()
    params = {**SMALL, **json.loads(args.params)}
    warnings.filterwarnings("ignore")
    exp, split = load_task("kang18_celltype")
    figures: dict[str, object] = {"folds": args.folds}
    if args.folds > 0:
        split = replace(split, folds=split.folds[: args.folds])
        t0 = time.perf_counter()
        res = run_benchmark(exp, split, ["cell_mean", "context_mean", "perturbation_mean",
                                         "incontext"], seed=0, show_progress=False,
                            model_params={"incontext": params})
        figures["bench_s"] = round(time.perf_counter() - t0, 1)
        print_summary(res.summary, "kang18_celltype (first folds)", res.best_baseline())
        s = res.summary.set_index("model")
        for m in s.index:
            figures[f"{m}_score"] = round(float(s.loc[m, "score"]), 4)
            figures[f"{m}_pearson_delta"] = round(float(s.loc[m, "pearson_delta"]), 4)
    if not args.no_embed:
        t1 = time.perf_counter()
        model = get_model("incontext", seed=0, **params).fit(exp)
        emb = model.embed(exp)
        cell_type = exp.contexts.astype(str)
        x = exp.rows(np.arange(exp.n_cells))
        figures["embed_dim"] = emb.shape[1]
        figures["knn_incontext"] = round(knn_accuracy(emb, cell_type), 4)
        # sets of one's own cell type carry the label; sets mixing all cells do not
        mixed = model.embed(replace(exp, context_key=None))
        figures["knn_incontext_mixed_sets"] = round(knn_accuracy(mixed, cell_type), 4)
        figures["knn_pca"] = round(knn_accuracy(pca(x, emb.shape[1]), cell_type), 4)
        figures["knn_pca50"] = round(knn_accuracy(pca(x, 50), cell_type), 4)
        figures["embed_s"] = round(time.perf_counter() - t1, 1)
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
