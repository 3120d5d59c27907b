from __future__ import annotations

from pathlib import Path

import pytest

from perturbcast.data import read_experiment
from perturbcast.datasets import simulate

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def sim_adata():
    """A small simulated screen: 2 contexts, 8 singles, 4 combos, raw counts."""
    return simulate(n_genes=80, n_singles=8, n_combos=4, n_contexts=2, n_batches=2,
                    cells_per_condition=30, control_cells=80, seed=7)


@pytest.fixture(scope="session")
def sim_exp(sim_adata):
    return read_experiment(sim_adata, "perturbation", "control", context_key="context",
                           batch_key="batch")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA.resolve()


@pytest.fixture(scope="session")
def sim_file(tmp_path_factory, sim_adata):
    """``sim_adata`` as an .h5ad file (without the simulator's true effects)."""
    path = tmp_path_factory.mktemp("data") / "sim.h5ad"
    a = sim_adata.copy()
    del a.uns["true_effects"]
    a.write_h5ad(path)
    return path
