"""Built-in simulator of a pooled perturbation screen with a known ground truth.

A random gene regulatory network (a DAG of regulators -> targets) propagates each knockout or
activation; contexts rewire and rescale the network and shift baseline expression; combinations
add their singles' effects plus, for some pairs, an interaction; batches shift genes
(``batch_effect``: sd of each batch's per-gene log-scale shift); counts are negative binomial
(gamma-Poisson) with a per-cell library size and a per-cell perturbation efficiency (some cells
escape).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


@dataclass
class SimulationConfig:
    n_genes: int = 300
    n_singles: int = 24
    n_combos: int = 12
    n_contexts: int = 3
    n_batches: int = 2
    batch_effect: float = 0.15  # sd of each batch's per-gene log-scale shift
    cells_per_condition: int = 60
    control_cells: int = 300
    regulator_fraction: float = 0.15
    targets_per_regulator: int = 20
    effect_size: float = 2.5
    activation_fraction: float = 0.3
    context_rewiring: float = 0.3
    interaction_fraction: float = 0.5
    escape_fraction: float = 0.1
    library_size: float = 4000.0
    dispersion: float = 5.0
    control_label: str = "control"
    seed: int = 0


def simulate(config: SimulationConfig | None = None, **overrides) -> ad.AnnData:
    """Simulate a perturbation screen as an AnnData of raw counts.

    Parameters
    ----------
    config : SimulationConfig, optional
    **overrides : fields of :class:`SimulationConfig` (e.g. ``n_genes=500, seed=1``)

    Returns
    -------
    AnnData, shape (n_cells, n_genes), X int32 CSR counts; obs columns ``perturbation``
    ('control', 'G0012', 'G0012+G0040'), ``context`` ('ctx0', ...), ``batch`` ('b0', ...),
    ``n_counts``. ``uns['simulation']`` holds the config and, per context, the true mean
    log-scale effect of every condition (``varm``-aligned arrays in ``uns['true_effects']``).
    """
    cfg = config or SimulationConfig()
    if overrides:
        cfg = SimulationConfig(**{**asdict(cfg), **overrides})
    rng = np.random.default_rng(cfg.seed)
    g = cfg.n_genes
    genes = np.array([f"G{i:04d}" for i in range(g)])

    n_reg = max(2, int(cfg.regulator_fraction * g))
    regulators = np.sort(rng.choice(g, n_reg, replace=False))
    w = np.zeros((g, g))  # w[i, j]: effect of regulator i on gene j (log scale)
    rank = {r: k for k, r in enumerate(regulators)}
    for r in regulators:
        targets = rng.choice(g, cfg.targets_per_regulator, replace=False)
        # acyclic: a regulator only regulates regulators later in the order
        targets = [t for t in targets if t != r and (t not in rank or rank[t] > rank[r])]
        w[r, targets] = rng.choice([-1, 1], len(targets)) * rng.uniform(0.3, 0.9, len(targets))

    base = rng.normal(0.0, 1.6, g)
    contexts = [f"ctx{i}" for i in range(cfg.n_contexts)]
    ctx_w, ctx_base = [], []
    for _ in contexts:
        keep = rng.random(w.shape) > cfg.context_rewiring
        ctx_w.append(w * keep * rng.lognormal(0, 0.3, w.shape))
        ctx_base.append(base + rng.normal(0, 0.5, g))
    batch_shift = rng.normal(0, cfg.batch_effect, (cfg.n_batches, g))

    n_single_reg = int(round(0.7 * cfg.n_singles))
    pool_other = np.setdiff1d(np.arange(g), regulators)
    single_idx = np.concatenate([
        rng.choice(regulators, min(n_single_reg, n_reg), replace=False),
        rng.choice(pool_other, cfg.n_singles - min(n_single_reg, n_reg), replace=False),
    ])
    direction = np.where(rng.random(single_idx.size) < cfg.activation_fraction, 1.0, -1.0)
    singles = {genes[i]: (int(i), float(d)) for i, d in zip(single_idx, direction, strict=True)}
    names = list(singles)
    pairs: set[tuple[str, str]] = set()
    while len(pairs) < min(cfg.n_combos, len(names) * (len(names) - 1) // 2):
        a, b = sorted(rng.choice(names, 2, replace=False))
        pairs.add((a, b))
    combos = sorted(pairs)
    interaction = {f"{a}+{b}": float(rng.uniform(-1.5, 1.5)) if rng.random() <
                   cfg.interaction_fraction else 0.0 for a, b in combos}

    def propagate(ci: int, gene: int, sign: float) -> np.ndarray:
        delta = np.zeros(g)
        delta[gene] = sign * cfg.effect_size
        effect = delta.copy()
        frontier = delta
        for _ in range(6):  # DAG depth is bounded; 6 hops is plenty for these sizes
            frontier = np.tanh(frontier) @ ctx_w[ci]
            effect += frontier
            if np.abs(frontier).max() < 1e-4:
                break
        return effect

    blocks, obs_rows, true = [], [], {}
    conditions = [cfg.control_label] + names + [f"{a}+{b}" for a, b in combos]
    for ci, ctx in enumerate(contexts):
        eff_single = {n: propagate(ci, *singles[n]) for n in names}
        for cond in conditions:
            if cond == cfg.control_label:
                effect, n_cells = np.zeros(g), cfg.control_cells
            elif "+" in cond:
                a, b = cond.split("+")
                ea, eb = eff_single[a], eff_single[b]
                effect = ea + eb + interaction[cond] * np.tanh(ea) * np.tanh(eb) * 2.0
                n_cells = cfg.cells_per_condition
            else:
                effect, n_cells = eff_single[cond], cfg.cells_per_condition
            true[f"{cond}|{ctx}"] = effect.astype(np.float32)
            efficiency = rng.beta(5, 1.5, n_cells) * (rng.random(n_cells) > cfg.escape_fraction)
            batch = rng.integers(0, cfg.n_batches, n_cells)
            logits = ctx_base[ci] + batch_shift[batch] + efficiency[:, None] * effect
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            lib = rng.lognormal(np.log(cfg.library_size), 0.3, n_cells)
            mu = p * lib[:, None]
            lam = rng.gamma(cfg.dispersion, mu / cfg.dispersion)
            blocks.append(sp.csr_matrix(rng.poisson(lam).astype(np.int32)))
            obs_rows.append(pd.DataFrame({"perturbation": cond, "context": ctx,
                                          "batch": [f"b{b}" for b in batch]}))
    x = sp.vstack(blocks).tocsr()
    obs = pd.concat(obs_rows, ignore_index=True)
    obs["n_counts"] = np.asarray(x.sum(axis=1)).ravel()
    obs.index = [f"cell{i:06d}" for i in range(len(obs))]
    for col in ("perturbation", "context", "batch"):
        obs[col] = obs[col].astype("category")
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=genes))
    adata.uns["simulation"] = {
        "config": asdict(cfg),
        "interaction": interaction,
        "regulators": genes[regulators].tolist(),
    }
    adata.uns["true_effects"] = {k.replace("/", "_"): v for k, v in true.items()}
    return adata
