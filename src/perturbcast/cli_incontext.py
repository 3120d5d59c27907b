"""Commands and options of the in-context model: ``embed``, ``predict --prompt``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .cli_options import Overwrite, _check_out
from .errors import InputError

err = Console(stderr=True)


def prompt_options(m, prompt: Path | None, prompt_filter: list[str] | None) -> dict:
    """``predict`` keyword arguments from --prompt FILE and --prompt-filter KEY=VALUE."""
    if prompt is None and not prompt_filter:
        return {}
    if m.name != "incontext":
        raise InputError(f"--prompt/--prompt-filter work with the incontext model, not "
                         f"{m.name!r}; drop them.")
    if prompt is not None and not prompt.exists():
        raise InputError(f"file not found: {prompt}; check the path passed to --prompt.")
    filt = {}
    for item in prompt_filter or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InputError(f"--prompt-filter {item!r} is not KEY=VALUE; e.g. "
                             f"--prompt-filter cell_type=B.")
        filt.setdefault(key.strip(), []).append(value)
    import anndata as ad

    return {"prompt": ad.read_h5ad(prompt) if prompt is not None else None,
            "prompt_filter": filt or None}


def embed(
    model_dir: Annotated[Path, typer.Option("--model", help="Saved incontext model folder.")],
    data: Annotated[Path, typer.Option("--data", help=".h5ad with cells to embed.")],
    out_file: Annotated[Path, typer.Option("--out", help=".h5ad to write (the input with "
                                           "obsm['X_perturbcast']).")],
    overwrite: Overwrite = False,
) -> None:
    """Embed cells with an incontext model: writes obsm['X_perturbcast']."""
    import anndata as ad

    from .models.base import PerturbationModel
    from .utils import atomic_path

    _check_out(out_file, overwrite, is_dir=False)

    m = PerturbationModel.load(model_dir)
    if not hasattr(m, "embed"):
        raise InputError(f"model {m.name!r} has no embeddings; use an incontext model.")
    if not data.exists():
        raise InputError(f"file not found: {data}; check the path passed to --data.")
    adata = ad.read_h5ad(data)
    adata.obsm["X_perturbcast"] = m.embed(adata)
    with atomic_path(out_file) as tmp:
        adata.write_h5ad(tmp)
    err.print(f"wrote {out_file}: obsm['X_perturbcast'] {adata.obsm['X_perturbcast'].shape}")


def register(app: typer.Typer) -> None:
    """Add the in-context commands to the command line."""
    app.command()(embed)
