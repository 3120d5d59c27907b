import numpy as np

from perturbcast.data import read_experiment
from perturbcast.datasets import simulate


def test_deterministic_and_shaped():
    a = simulate(n_genes=50, n_singles=6, n_combos=3, n_contexts=2, cells_per_condition=20,
                 control_cells=40, seed=3)
    b = simulate(n_genes=50, n_singles=6, n_combos=3, n_contexts=2, cells_per_condition=20,
                 control_cells=40, seed=3)
    c = simulate(n_genes=50, n_singles=6, n_combos=3, n_contexts=2, cells_per_condition=20,
                 control_cells=40, seed=4)
    assert a.shape == (2 * (40 + 9 * 20), 50)
    assert (a.X != b.X).nnz == 0 and (a.X != c.X).nnz > 0
    assert a.X.dtype == np.int32 and a.X.min() >= 0
    assert set(a.obs.columns) >= {"perturbation", "context", "batch", "n_counts"}
    assert sum("+" in p for p in a.obs.perturbation.cat.categories) == 3


def test_knockouts_propagate_and_contexts_differ():
    a = simulate(n_genes=120, n_singles=10, n_combos=4, n_contexts=2, cells_per_condition=150,
                 control_cells=300, activation_fraction=0.0, seed=5)
    exp = read_experiment(a, "perturbation", "control", context_key="context")
    keys, means = exp.group_means()
    mean = {(p, c): m for p, c, m in zip(keys.perturbation, keys.context, means, strict=True)}
    regs = set(a.uns["simulation"]["regulators"])
    downstream_moves = 0
    for single in exp.singles():
        g = int(np.flatnonzero(exp.genes == single)[0])
        delta = mean[(single, "ctx0")] - mean[("control", "ctx0")]
        assert delta[g] < -0.3  # the knocked-down target itself goes down
        if single in regs:
            others = np.delete(np.abs(delta), g)
            downstream_moves += int((others > 0.3).sum() > 0)
    assert downstream_moves >= 1  # effects propagate through the network
    ctrl_diff = np.abs(mean[("control", "ctx0")] - mean[("control", "ctx1")]).mean()
    assert ctrl_diff > 0.1


def test_batch_effect_sets_the_size_of_the_batch_shift():
    def batch_gap(effect: float) -> float:
        a = simulate(n_genes=60, n_singles=2, n_combos=0, n_contexts=1, n_batches=2,
                     cells_per_condition=10, control_cells=400, batch_effect=effect, seed=2)
        exp = read_experiment(a, "perturbation", "control")
        x, b = exp.rows(np.flatnonzero(exp.is_control)), a.obs.batch.to_numpy()[exp.is_control]
        return float(np.abs(x[b == "b0"].mean(0) - x[b == "b1"].mean(0)).mean())

    none, default, strong = batch_gap(0.0), batch_gap(0.15), batch_gap(1.0)
    assert none < default < strong and strong > 3 * none  # no shift: sampling noise only
