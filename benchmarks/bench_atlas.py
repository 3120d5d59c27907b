"""Atlas throughput and memory: a perturbation x context grid streamed to one .h5ad.

Default case: 200 perturbations x 10 contexts x 100 cells x 300 genes (240 MB of cells) from
the context_mean baseline, with and without a signature screen. Peak memory is the growth of
the process's peak RSS during the run (Linux: /proc/self/clear_refs resets the peak). Ends with
one line of key=value figures.

    python benchmarks/bench_atlas.py [--perts 200] [--contexts 10] [--cells 100] [--genes 300]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from perturbcast.atlas import SignatureScorer, predict_atlas
from perturbcast.data import read_experiment
from perturbcast.datasets import simulate
from perturbcast.models import get_model


def _rss(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", text).group(1)) * 1024


def run(model, exp, perts, n_cells, out: Path, scorer=None) -> tuple[float, float]:
    """Seconds and peak RSS growth (MB) of one atlas."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss("VmRSS")
    t0 = time.perf_counter()
    predict_atlas(model, exp, perts, None, n_cells, out, scorer=scorer, show_progress=False)
    return time.perf_counter() - t0, (_rss("VmHWM") - before) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--perts", type=int, default=200)
    ap.add_argument("--contexts", type=int, default=10)
    ap.add_argument("--cells", type=int, default=100)
    ap.add_argument("--genes", type=int, default=300)
    args = ap.parse_args()
    sim = simulate(n_genes=args.genes, n_singles=2, n_combos=0, n_contexts=args.contexts,
                   n_batches=1, cells_per_condition=10, control_cells=200, seed=0)
    exp = read_experiment(sim, "perturbation", "control", context_key="context")
    model = get_model("context_mean").fit(exp)
    perts = [f"P{i:04d}" for i in range(args.perts)]
    genes = exp.genes
    scorer = SignatureScorer(list(genes[:20]), list(genes[20:40]))
    n_total = args.perts * args.contexts * args.cells
    grid_mb = n_total * args.genes * 4 / 1e6
    with tempfile.TemporaryDirectory() as tmp:
        predict_atlas(model, exp, perts[:2], None, 1, Path(tmp) / "w.h5ad", show_progress=False)
        sec, peak = run(model, exp, perts, args.cells, Path(tmp) / "a.h5ad")
        sec_s, peak_s = run(model, exp, perts, args.cells, Path(tmp) / "s.h5ad", scorer)
        size_mb = (Path(tmp) / "a.h5ad").stat().st_size / 1e6
    print(f"grid {args.perts} x {args.contexts} x {args.cells} cells x {args.genes} genes "
          f"({grid_mb:.0f} MB of cells; file {size_mb:.0f} MB)")
    print(f"atlas: {sec:.1f} s, {n_total / sec:,.0f} cells/s, peak RSS +{peak:.0f} MB")
    print(f"atlas + signature screen: {sec_s:.1f} s, peak RSS +{peak_s:.0f} MB")
    print(f"atlas_cells_per_s={n_total / sec:.0f} atlas_peak_mb={peak:.1f} "
          f"screen_peak_mb={peak_s:.1f} grid_mb={grid_mb:.0f} "
          f"peak_fraction={np.round(peak / grid_mb, 3)}")


if __name__ == "__main__":
    main()
