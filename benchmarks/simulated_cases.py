"""The simulated screens the selection benchmarks judge on (``bench_blend``, ``bench_base_rule``):
one screen per data seed, each split kind made with that seed."""

from __future__ import annotations

from collections.abc import Iterator

from perturbcast.data import Experiment, Split, make_split, read_experiment
from perturbcast.datasets import simulate


def simulated_cases(data_seeds: str, splits: str, n_folds: int
                    ) -> Iterator[tuple[int, str, Experiment, Split]]:
    """(data seed, split kind, experiment, split) for each comma-separated data seed and kind."""
    for data_seed in map(int, data_seeds.split(",")):
        adata = simulate(n_genes=120, n_singles=14, n_combos=12, n_contexts=3, n_batches=1,
                         cells_per_condition=40, control_cells=200, seed=data_seed)
        exp = read_experiment(adata, "perturbation", "control", context_key="context")
        for kind in splits.split(","):
            yield data_seed, kind, exp, make_split(exp, kind, n_folds=n_folds, seed=data_seed)
