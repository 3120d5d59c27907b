"""Speed of the in-context model: pretraining cells/s and in-context prediction cells/s.

Pretraining: optimiser steps of the masked-reconstruction loss on random log1p data (sets of
``set_size`` cells). Prediction: ``model.predict`` end to end (prompt drawn from the saved
training cells, sets of [prompt | query]), query cells per second; and the network part alone
with the prompt encoded once (the default) and with every [prompt | query] set run whole (the
path before the prompt cache), in the same run. Both cross-cell attention
variants (``module``, ``flat``) are timed.

When arc-stack is importable (``pip install arc-stack``; the packages its import chain needs but
the timed network does not use — scvi-tools, geomloss, psutil, ... — are stubbed when absent,
announced) its StateICLModelBase is timed at
the matched shape (genes, M tokens of width d, depth, heads, cells per set): a training step
(forward with its loss + backward) and its 5-step generation (5 forward passes per set), and
the ratios are printed (its loss mixin needs scvi-tools, so its training step uses our NB
likelihood on its NB mean and dispersion, masked entries only, as its own loss does).
Ends with one line of key=value figures.

    OMP_NUM_THREADS=1 python benchmarks/bench_incontext_speed.py [--genes 2000] [--steps 10]
"""

from __future__ import annotations

import argparse
import sys
import time
import types
import warnings

import numpy as np
import torch

from perturbcast.data import read_experiment
from perturbcast.datasets import simulate
from perturbcast.models import get_model
from perturbcast.modules.tabular import nb_log_likelihood

SHAPE = dict(n_modules=32, dim=16, depth=4, n_heads=4, set_size=64, n_prompt=32, n_sets=8)


def time_pretrain(model, n_genes: int, steps: int) -> float:
    p = model.params
    net = model.net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(p["n_sets"], p["set_size"], n_genes, generator=gen) * 3
    hidden = torch.rand(p["n_sets"], n_genes, generator=gen) < 0.4
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        loss = model.pretrain_loss(net, {"x": x, "hidden": hidden})
        loss.backward()
        opt.step()
        opt.zero_grad()
    return steps * p["n_sets"] * p["set_size"] / (time.perf_counter() - t0)


def time_predict(model, exp, n_cells: int) -> float:
    conds = [(p, c) for p in exp.perturbation_names()[:2] for c in exp.context_names()]
    model.predict(exp, conds[:1], n_cells=8)  # warm-up
    t0 = time.perf_counter()
    model.predict(exp, conds, n_cells=n_cells)
    return len(conds) * n_cells / (time.perf_counter() - t0)


def time_query_sets(model, n_genes: int, n_cells: int, cached: bool) -> float:
    """Query cells/s of the network part of prediction for one condition: the prompt encoded
    once and the query sets batched (``cached``), or every [prompt | query] set run whole
    (the path before the cache), on the same random inputs."""
    gen = np.random.default_rng(0)
    rows = gen.random((2 * model.params["n_prompt"], n_genes), dtype=np.float32) * 3
    x = gen.random((n_cells, n_genes), dtype=np.float32) * 3
    model._query_outputs(rows, x[:8], cached)  # warm-up
    t0 = time.perf_counter()
    model._query_outputs(rows, x, cached)
    return n_cells / (time.perf_counter() - t0)


def _stub(name: str) -> None:
    """An empty module whose every attribute is ``object`` (for imports arc-stack's model
    file chain needs but the timed network does not use)."""
    warnings.warn(f"{name} missing: stubbed so arc-stack's model imports", stacklevel=3)
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        full = ".".join(parts[:i])
        mod = sys.modules.setdefault(full, types.ModuleType(full))
        mod.__dict__.setdefault("__getattr__", lambda attr: object)
        mod.__dict__.setdefault("__path__", [])
        if i > 1:
            setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], mod)


def arc_stack_model(n_genes: int, n_cells: int):
    """arc-stack's StateICLModelBase at the matched shape, or None when not installed."""
    for _ in range(20):
        try:
            from stack.models.core.base import StateICLModelBase
            break
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.split(".")[0] == "stack":
                return None
            _stub(exc.name)
    else:
        return None
    return StateICLModelBase(n_genes, n_hidden=SHAPE["n_modules"], token_dim=SHAPE["dim"],
                             n_cells=n_cells, n_layers=SHAPE["depth"], n_heads=SHAPE["n_heads"])


def time_arc_stack(net, gen_net, n_genes: int, n_sets: int, steps: int):
    """Training cells/s (sets of net.n_cells) and generated query cells/s (half of each set of
    gen_net.n_cells)."""
    x = torch.poisson(torch.rand(n_sets, net.n_cells, n_genes) * 2)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net.train()
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        out = net(x, return_loss=False)  # its loss mixin needs scvi-tools: our NB likelihood
        loss = -(nb_log_likelihood(x, out["nb_mean"], out["nb_dispersion"].log())
                 * out["mask"]).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    train = steps * n_sets * net.n_cells / (time.perf_counter() - t0)
    gen_net.eval()
    x = torch.poisson(torch.rand(n_sets, gen_net.n_cells, n_genes) * 2)
    with torch.no_grad():
        gen_net(x, return_loss=False)
        t0 = time.perf_counter()
        for _ in range(5):  # its generation: 5 forward passes over [context | query] sets
            gen_net(x, return_loss=False)
    query_cells = n_sets * gen_net.n_cells // 2
    return train, query_cells / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--cells", type=int, default=512, help="predicted cells per condition")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", module="lightning")
    adata = simulate(n_genes=args.genes, n_singles=4, n_combos=0, n_contexts=2,
                     cells_per_condition=80, control_cells=200, seed=0)
    exp = read_experiment(adata, "perturbation", "control", context_key="context")
    figures: dict[str, object] = {"genes": exp.n_genes, "threads": torch.get_num_threads()}
    for cross in ("module", "flat"):
        model = get_model("incontext", seed=0, cross=cross, pretrain_steps=0,
                          finetune_steps=0, **SHAPE).fit(exp)
        figures[f"{cross}_pretrain_cells_per_s"] = round(time_pretrain(model, exp.n_genes,
                                                                       args.steps), 1)
        figures[f"{cross}_predict_cells_per_s"] = round(time_predict(model, exp, args.cells), 1)
        for cached in (True, False):
            figures[f"{cross}_query_sets_{'cached' if cached else 'uncached'}_cells_per_s"] = (
                round(time_query_sets(model, exp.n_genes, 4 * args.cells, cached), 1))
    set_cells = 2 * SHAPE["n_prompt"] + SHAPE["set_size"]
    net = arc_stack_model(exp.n_genes, SHAPE["set_size"])
    if net is None:
        print("arc-stack is not installed: no matched-size comparison (pip install arc-stack)")
        figures["arc_stack"] = "absent"
    else:
        gen_net = arc_stack_model(exp.n_genes, set_cells)
        train, gen = time_arc_stack(net, gen_net, exp.n_genes, SHAPE["n_sets"], args.steps)
        figures["arc_stack_train_cells_per_s"] = round(train, 1)
        figures["arc_stack_generate_cells_per_s"] = round(gen, 1)
        figures["pretrain_vs_arc_stack"] = round(
            figures["module_pretrain_cells_per_s"] / train, 2)
        figures["predict_vs_arc_stack"] = round(figures["module_predict_cells_per_s"] / gen, 2)
    print(" ".join(f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
