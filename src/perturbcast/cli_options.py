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
Exclude = Annotated[list[str] | None, typer.Option(
    "--exclude", help="Perturbation labels whose cells are dropped on reading, e.g. "
    "unassigned,multiplet (comma-separated or repeated); a trained model drops them when "
    "predicting too.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
SplitFile = Annotated[Path | None, typer.Option("--split", help="Split .json (from `perturbcast "
                                                "split`).")]
FoldOpt = Annotated[str | None, typer.Option("--fold", help="Fold name or index (default: the "
                                             "first).")]


def _fold(split_file: Path, fold: str | None):
    """The fold of a split .json named or numbered by ``--fold`` (default: the first)."""
    from .data import Split

    sp = Split.from_json(split_file)
    names = [f.name for f in sp.folds]
    key = fold or names[0]
    chosen = sp.folds[int(key)] if key.isdigit() and int(key) < len(names) else next(
        (f for f in sp.folds if f.name == key), None)
    if chosen is None:
        raise InputError(f"fold {key!r} not in {split_file}; folds: {', '.join(names)}.")
    return chosen


def _check_out(path: Path, overwrite: bool, is_dir: bool) -> None:
    """Refuse an output that exists (unless --overwrite) or cannot be written, before work."""
    from .utils import check_output

    check_output(path, overwrite, is_dir=is_dir)


def _held_out_conditions(split_file: Path, fold: str | None, exp, model
                         ) -> list[tuple[str, str]]:
    """``predict --split``: the fold's held-out conditions, after checking that they exist in
    the data (with the model's context key) and that the model was not trained on any."""
    import warnings

    chosen = _fold(split_file, fold)
    chosen.check(exp)
    test = [(str(p), str(c)) for p, c in chosen.test]
    if model.trained_conditions is None:
        warnings.warn(f"this model was saved without its training conditions, so predict "
                      f"cannot check that fold {chosen.name!r}'s held-out conditions were "
                      f"left out of its training; re-train it to have that check.",
                      stacklevel=2)
        return test
    seen = sorted(set(test) & set(model.trained_conditions))
    if seen:
        raise InputError(f"fold {chosen.name!r}: {len(seen)} of its {len(test)} held-out "
                         f"conditions were in this model's training ("
                         f"{', '.join(f'{p} ({c})' for p, c in seen[:3])}"
                         f"{', ...' if len(seen) > 3 else ''}); predict with a model trained "
                         f"on this fold (train --split {split_file} --fold {chosen.name}).")
    return test


def _read(data, perturbation_key, control, context_key, batch_key, layer, backed=False,
          min_cells=3, drop_small_groups=False, exclude=None, announce=True):
    """read_experiment; ``exclude`` as from --exclude (a model's saved labels: announce=False,
    so labels a file lacks pass without a word)."""
    import warnings

    from .data import read_experiment
    from .errors import suggest

    labels = (list(exclude or []) if not announce else  # a model's saved labels: as saved
              [x.strip() for item in exclude or [] for x in str(item).split(",") if x.strip()])
    exp = read_experiment(data, perturbation_key, control, context_key=context_key,
                          batch_key=batch_key, layer=layer, backed=backed, min_cells=min_cells,
                          drop_small_groups=drop_small_groups, exclude=labels)
    counts = exp.meta.get("excluded", {})
    if announce and counts:
        for label in (x for x, n in counts.items() if n == 0):
            warnings.warn(f"--exclude {label}: no cell of --perturbation-key "
                          f"{perturbation_key!r} has that label, so nothing was dropped for "
                          f"it.{suggest(label, exp.perturbation_names())}", stacklevel=2)
        dropped = {x: n for x, n in counts.items() if n}
        if dropped:
            err.print(f"excluded {sum(dropped.values())} cells labelled "
                      f"{', '.join(dropped)}")
    return exp


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
               context_key: str | None, only_predicted: bool = False):
    """The real cells for ``evaluate --real``: an .h5ad whole (``only_predicted``: its
    predicted perturbations and controls, announced), or from a store only the predicted
    perturbations (and controls) of the predicted contexts (so, unlike a whole file, a store
    does not reveal real perturbations the predictions left out)."""
    from .data.reading import open_h5ad
    from .data.store import is_store, store_cells

    if not is_store(path):
        real = open_h5ad(path, False, "--real")
        if not only_predicted:
            return real
        if perturbation_key not in real.obs or perturbation_key not in pred.obs:
            raise InputError(f"obs column {perturbation_key!r} must be in both --pred and "
                             f"--real; pass --perturbation-key with a column both files have.")
        return _predicted_part(real, pred, perturbation_key, control, context_key, path)
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


def _predicted_part(real, pred, perturbation_key: str, control: str,
                    context_key: str | None, path: Path):
    """``evaluate --only-predicted``: the real cells of the predicted conditions, per
    (perturbation, context) when the files are scored per context, plus the controls (of the
    predicted contexts); announced."""
    import numpy as np

    from .eval.by_context import context_column

    ckey = context_column(pred, real, context_key)
    labels = real.obs[perturbation_key].astype(str).to_numpy()
    is_ctrl = labels == control
    if ckey is None:
        wanted = set(pred.obs[perturbation_key].astype(str)) - {control}
        keep = is_ctrl | np.isin(labels, list(wanted))
        what = f"{len(wanted)} predicted perturbations"
    else:
        ctx = real.obs[ckey].astype(str).to_numpy()
        p_lab = pred.obs[perturbation_key].astype(str).to_numpy()
        p_ctx = pred.obs[ckey].astype(str).to_numpy()
        wanted = set(zip(p_lab[p_lab != control], p_ctx[p_lab != control], strict=True))
        pairs = np.array([f"{a}\t{b}" for a, b in zip(labels, ctx, strict=True)])
        keep = np.isin(pairs, [f"{a}\t{b}" for a, b in wanted]) | (
            is_ctrl & np.isin(ctx, list(set(p_ctx))))
        what = f"{len(wanted)} predicted (perturbation, {ckey}) conditions"
    n_real = len(set(labels[~is_ctrl]))
    err.print(f"--only-predicted: scoring the {what} against {path}, which has {n_real} "
              f"perturbations; the others are left out (discrimination ranks among the "
              f"predicted ones only).")
    return real[keep].copy()


def _print_choices(name: str, m) -> None:
    """After ``train``: the base and the share of the correction a model chose, and blend
    weights (blend, or a learned model on the blend base)."""
    if getattr(m, "base_name", "none") != "none" or getattr(m, "shrink", 1.0) != 1.0:
        s = m.training_summary
        err.print(f"{name}: base {m.base_name} (base={m.params['base']}), keeps "
                  f"{m.shrink:g} of its correction over it (shrink={m.params['shrink']}"
                  + (f", chosen on {s.get('shrink_held_out', 0)} held-out training conditions"
                     if str(m.params["shrink"]).startswith("auto") else "") + ")")
    weights = getattr(m, "training_summary", {}).get("blend_weights")
    if weights:
        err.print(f"{name}: blend weights {weights} (learned on "
                  f"{m.training_summary.get('inner_unit')} inner folds of the training cells)")
