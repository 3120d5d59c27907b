"""Shared by CLI tests (the bad-input catalogue, test_eval_scale_and_context,
test_no_silent_wrong_answers): a tiny simulated screen and a CLI runner that returns
(exit code, stderr)."""

from __future__ import annotations

import anndata as ad

from perturbcast.cli import main
from perturbcast.datasets import simulate

KEYS = ["--perturbation-key", "perturbation", "--control", "control"]


def tiny() -> ad.AnnData:
    """A tiny simulated screen: 2 contexts, 4 singles, 2 combos, 30 genes, raw int32 counts."""
    a = simulate(n_genes=30, n_singles=4, n_combos=2, n_contexts=2, n_batches=1,
                 cells_per_condition=8, control_cells=20, seed=3)
    del a.uns["true_effects"]
    return a


def _cli(args: list[str], capsys=None) -> tuple[int, str]:
    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = e.code or 0
    return code, (capsys.readouterr().err if capsys else "")
