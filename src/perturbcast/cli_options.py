"""Shared pieces of the command line: consoles, option types and small input/output checks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .errors import InputError

err = Console(stderr=True)
out = Console()

DataOpt = Annotated[Path, typer.Option("--data", help="Input .h5ad file.")]
PertKey = Annotated[str, typer.Option("--perturbation-key", help="obs column of labels.")]
Control = Annotated[str, typer.Option("--control", help="Label of control cells.")]
CtxKey = Annotated[str | None, typer.Option("--context-key", help="obs column of contexts.")]
BatchKey = Annotated[str | None, typer.Option("--batch-key", help="obs column of batches.")]
Layer = Annotated[str | None, typer.Option("--layer", help="Use this layer instead of X.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]
Backed = Annotated[bool, typer.Option("--backed", help="Read the file backed (out of core).")]
Params = Annotated[list[str] | None, typer.Option(
    "--param", help="Model parameter KEY=VALUE (repeatable): to every selected model that has "
    "KEY; MODEL.KEY=VALUE to that model only, e.g. --param flow.max_steps=500 --param "
    "embeddings=genes.csv. A key no selected model has is an error.")]
DropSmall = Annotated[bool, typer.Option("--drop-small-groups",
                                         help="Drop groups below --min-cells.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]


def _check_out(path: Path, overwrite: bool, is_dir: bool) -> None:
    """Refuse an output that exists (unless --overwrite) or cannot be written, before work."""
    from .utils import check_output

    check_output(path, overwrite, is_dir=is_dir)


def _read(data, perturbation_key, control, context_key, batch_key, layer, backed=False,
          min_cells=3, drop_small_groups=False):
    from .data import read_experiment

    return read_experiment(data, perturbation_key, control, context_key=context_key,
                           batch_key=batch_key, layer=layer, backed=backed,
                           min_cells=min_cells, drop_small_groups=drop_small_groups)


def _obs_columns(path: Path) -> list[str]:
    """obs column names of an h5ad (or a store) without loading X."""
    from .data.reading import open_h5ad
    from .data.store import is_store

    if is_store(path):
        import pyarrow.parquet as pq

        return list(pq.read_schema(Path(path) / "obs.parquet").names)

    a = open_h5ad(path, backed=True)
    try:
        return [str(c) for c in a.obs.columns]
    finally:
        a.file.close()


def _read_real(path: Path, pred, perturbation_key: str, control: str,
               context_key: str | None):
    """The real cells for ``evaluate --real``: an .h5ad whole, or from a store only the
    predicted perturbations (and controls) of the predicted contexts (so, unlike a whole
    file, a store does not reveal real perturbations the predictions left out)."""
    from .data.reading import open_h5ad
    from .data.store import is_store, store_cells

    if not is_store(path):
        return open_h5ad(path, False, "--real")
    if perturbation_key not in pred.obs:
        raise InputError(f"obs column {perturbation_key!r} not found in the predictions "
                         f"(columns: {', '.join(map(str, pred.obs.columns))}); pass "
                         f"--perturbation-key with a column both files have.")
    keep = {perturbation_key: set(pred.obs[perturbation_key].astype(str)) | {control}}
    record = dict(pred.uns.get("perturbcast", {}) or {})
    ckey = context_key or record.get("context_key") or None
    if ckey and ckey in pred.obs:
        keep[ckey] = set(pred.obs[ckey].astype(str))
    return store_cells(path, keep)
