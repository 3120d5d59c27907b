"""The ``perturbcast`` command line: a thin layer over the Python API."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from . import cli_incontext, cli_tools
from .cli_options import (
    Backed,
    BatchKey,
    Control,
    CtxKey,
    DataOpt,
    DropSmall,
    Exclude,
    FoldOpt,
    Layer,
    Overwrite,
    Params,
    PertKey,
    Seed,
    SplitFile,
    _check_out,
    _fold,
    _held_out_conditions,
    _obs_columns,
    _print_choices,
    _read,
    err,
)
from .errors import InputError, Terminated
from .repeated_warnings import WarnOnce, one_line_warning
from .sigterm import raise_on_sigterm, stopped_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Predict single-cell perturbation responses and evaluate them like "
                       "cell-eval, fast.")

Seeds = Annotated[str | None, typer.Option(
    "--seeds", help="Comma-separated seeds, e.g. 0,1,2: each learned model is fitted once per "
    "seed and reported as mean ± sd (baselines are deterministic and run once). Default: "
    "--seed.")]
TASK_FIXED = ("--split", "--n-folds", "--min-cells", "--drop-small-groups", "--perturbation-key",
              "--control", "--context-key", "--batch-key", "--layer", "--exclude")


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Report folder.")] = Path(
        "perturbcast-demo"),
    split: Annotated[str, typer.Option("--split", help="Split kind.")] = "combo",
    seed: Seed = 0,
    seeds: Seeds = None, overwrite: Overwrite = False,
) -> None:
    """Simulate a screen, run every model (set models with a short training) on a split,
    print the table and the verdict, and write a report."""
    _check_out(out_dir, overwrite, is_dir=True)
    from .demo import run_demo
    from .models.selection import parse_seeds

    run_demo(out_dir, split, parse_seeds(seeds) if seeds else [seed], err)


@app.command()
def benchmark(
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")],
    data: Annotated[Path | None, typer.Option("--data", help="Input .h5ad file.")] = None,
    perturbation_key: Annotated[str | None, typer.Option("--perturbation-key")] = None,
    control: Annotated[str | None, typer.Option("--control")] = None,
    context_key: CtxKey = None,
    batch_key: BatchKey = None,
    layer: Layer = None,
    split: Annotated[str | None, typer.Option(
        "--split", help="unseen-perturbation (default) | unseen-context | combo | a split .json "
        "file")] = None,
    task: Annotated[str | None, typer.Option("--task", help="A real-task preset (sets keys, "
                                             "filter and split).")] = None,
    models: Annotated[str | None, typer.Option(
        "--models", help="Comma-separated models, or baselines | learned | all (default: all)."
    )] = None,
    n_folds: Annotated[int | None, typer.Option("--n-folds", help="Folds (default 5).")] = None,
    fdr: Annotated[str, typer.Option("--fdr", help="per_perturbation | global")] =
    "per_perturbation",
    seed: Seed = 0,
    seeds: Seeds = None,
    min_cells: Annotated[int | None, typer.Option(
        "--min-cells", help="Smallest allowed group (default 3).")] = None,
    drop_small_groups: DropSmall = False, exclude: Exclude = None,
    param: Params = None, overwrite: Overwrite = False,
) -> None:
    """Run models over all folds; write summary.csv, per_perturbation.csv and fits.csv."""
    _check_out(out_dir, overwrite, is_dir=True)
    from .benchmark import run_benchmark
    from .data import Split, make_split
    from .datasets.tasks import load_task
    from .demo import finish_benchmark
    from .models import check_params
    from .models.selection import parse_param_items, parse_seeds, route_params, select_models

    names = select_models(models)
    model_params = {n: check_params(n, p)  # bad kinds or ranges fail before any reading
                    for n, p in route_params(names, parse_param_items(param)).items()}
    seed_list = parse_seeds(seeds) if seeds else [seed]
    if task:
        given = [split, n_folds, min_cells, drop_small_groups or None, perturbation_key,
                 control, context_key, batch_key, layer, exclude]
        clash = [opt for opt, v in zip(TASK_FIXED, given, strict=True) if v is not None]
        if clash:
            raise InputError(f"--task {task} sets its own keys, cell filter and split; drop "
                             f"{', '.join(clash)} (or use --data without --task).")
        exp, sp = load_task(task, data)
    else:
        if data is None or perturbation_key is None or control is None:
            raise InputError("benchmark needs --task, or --data with --perturbation-key and "
                             "--control.")
        exp = _read(data, perturbation_key, control, context_key, batch_key, layer,
                    min_cells=3 if min_cells is None else min_cells,
                    drop_small_groups=drop_small_groups, exclude=exclude)
        split = split or "unseen-perturbation"
        sp = (Split.from_json(split) if split.endswith(".json")
              else make_split(exp, split, n_folds=n_folds or 5, seed=seed))
    err.print(f"{exp.describe()}; {len(sp.folds)} fold(s); models: {', '.join(names)}; "
              f"seeds: {','.join(map(str, seed_list))}")
    group = not models or any(g in ("all", "learned") for g in models.split(","))
    result = run_benchmark(exp, sp, names, fdr=fdr, model_params=model_params, seeds=seed_list,
                           skip_unable=group)  # a group skips (announced) what cannot run
    finish_benchmark(result, out_dir, f"benchmark: {task or data}", [exp.describe()], err, sp)


@app.command()
def split(
    data: DataOpt, perturbation_key: PertKey, control: Control,
    out_file: Annotated[Path, typer.Option("--out", help="Split .json to write.")],
    kind: Annotated[str, typer.Option("--split")] = "unseen-perturbation",
    context_key: CtxKey = None, n_folds: Annotated[int, typer.Option("--n-folds")] = 5,
    seed: Seed = 0, exclude: Exclude = None, overwrite: Overwrite = False,
) -> None:
    """Write a deterministic split (JSON) of the file's conditions."""
    _check_out(out_file, overwrite, is_dir=False)
    from .data import make_split

    exp = _read(data, perturbation_key, control, context_key, None, None, exclude=exclude)
    sp = make_split(exp, kind, n_folds=n_folds, seed=seed)
    sp.to_json(out_file)
    err.print(f"wrote {out_file}: {len(sp.folds)} folds")


@app.command()
def train(
    data: DataOpt, perturbation_key: PertKey, control: Control,
    out_dir: Annotated[Path, typer.Option("--out", help="Model folder to write.")],
    model: Annotated[str, typer.Option("--model", help="Model name.")] = "linear",
    context_key: CtxKey = None, batch_key: BatchKey = None, layer: Layer = None,
    split_file: SplitFile = None, fold: FoldOpt = None, seed: Seed = 0,
    backed: Backed = False, exclude: Exclude = None, param: Params = None,
    overwrite: Overwrite = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run of the "
                                         "same command from its last checkpoint.")] = False,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Training steps "
                                                  "between resumable checkpoints.")] = 50,
    devices: Annotated[str, typer.Option("--devices", help="Set models: processes (GPUs) per "
                                         "node, or 'auto'.")] = "1",
    num_nodes: Annotated[int, typer.Option("--num-nodes", help="Set models: nodes.")] = 1,
    strategy: Annotated[str, typer.Option("--strategy", help="Set models: auto | ddp | "
                                          "fsdp.")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="Set models: auto (bf16-mixed "
                                           "on GPU) | bf16-mixed | 32.")] = "auto",
) -> None:
    """Fit a model (on a fold's training cells, or all cells) and save it.

    --data may be an .h5ad or a store folder from `perturbcast convert`. Under torchrun /
    SLURM every process runs this command; rank 0 saves the model."""
    import shutil

    from .train.resume import resumable

    _check_out(out_dir, overwrite, is_dir=True)
    resume_dir = out_dir.parent / f".{out_dir.name}.resume"
    from .models import check_params, get_model
    from .models.selection import parse_param_items, route_params

    params = check_params(model, route_params([model], parse_param_items(param))[model])
    exp = _read(data, perturbation_key, control, context_key, batch_key, layer, backed,
                exclude=exclude)
    mask = None
    if split_file is not None:
        chosen = _fold(split_file, fold)
        mask = chosen.train_mask(exp)
    from .models import get_model_class
    from .train.distributed import global_rank

    whole = devices.removeprefix("-").isdigit()
    dist = {"devices": int(devices) if whole else devices, "num_nodes": num_nodes,
            "strategy": strategy, "precision": precision}
    if "devices" not in get_model_class(model).param_names():
        if dist != {"devices": 1, "num_nodes": 1, "strategy": "auto", "precision": "auto"}:
            raise InputError(f"--devices/--num-nodes/--strategy/--precision apply to the set "
                             f"models (flow, transition); {model!r} trains on one process.")
    else:
        params = {**dist, **params}
    m = get_model(model, seed=seed, **params)
    if split_file is not None:  # fail before training if the fold's test cannot be predicted
        m.check_can_predict(exp, sorted({p for p, _ in chosen.test}), mask)
    if not resume:
        shutil.rmtree(resume_dir, ignore_errors=True)  # a stale run's checkpoints
    once = WarnOnce()  # the same notice from every inner-fold fit of base=auto: shown once
    with resumable(resume_dir, checkpoint_every, resume), once.model(model):
        m.fit(exp, mask)
    if global_rank() != 0:
        return
    if once.repeats_line("the inner folds and probes"):
        err.print(once.repeats_line("the inner folds and probes"), highlight=False)
    m.save(out_dir)
    shutil.rmtree(resume_dir, ignore_errors=True)
    err.print(f"saved {model} model to {out_dir} ({len(m.genes)} genes, "
              f"{len(m.vocabulary)} training perturbations)")
    _print_choices(model, m)


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Option("--model", help="Saved model folder.")],
    data: Annotated[Path, typer.Option("--data", help=".h5ad with control cells.")],
    out_file: Annotated[Path, typer.Option("--out", help="Predictions .h5ad to write.")],
    perturbations: Annotated[str | None, typer.Option(
        "--perturbations", help="Comma-separated labels (default: model vocabulary).")] = None,
    contexts: Annotated[str | None, typer.Option(
        "--contexts", help="Comma-separated contexts (default: all with controls).")] = None,
    split_file: Annotated[Path | None, typer.Option(
        "--split", help="Split .json: predict the held-out conditions of --fold (instead of "
        "--perturbations/--contexts).")] = None,
    fold: FoldOpt = None,
    n_cells: Annotated[int, typer.Option("--n-cells", help="Cells per condition.")] = 100,
    include_controls: Annotated[bool, typer.Option("--include-controls")] = False,
    layer: Layer = None, backed: Backed = False, overwrite: Overwrite = False,
    prompt: Annotated[Path | None, typer.Option(
        "--prompt", help="incontext: .h5ad with example cells of each perturbation (and "
        "controls); default: the model's training cells.")] = None,
    prompt_filter: Annotated[list[str] | None, typer.Option(
        "--prompt-filter", help="incontext: keep prompt cells with obs KEY=VALUE "
        "(repeatable).")] = None,
) -> None:
    """Predict cells for perturbations from the control cells of a file (model's keys)."""
    _check_out(out_file, overwrite, is_dir=False)
    if n_cells < 1:
        raise InputError(f"--n-cells {n_cells}: pass at least 1 cell per condition.")
    if split_file is not None and (perturbations or contexts):
        raise InputError("--split predicts the fold's held-out conditions; drop "
                         "--perturbations/--contexts (or drop --split).")
    from .models.base import PerturbationModel
    from .utils import atomic_path

    m = PerturbationModel.load(model_dir)
    k = m.keys
    batch_key = k.get("batch_key")
    if batch_key and batch_key not in _obs_columns(data):
        warnings.warn(f"the model was trained with batch key {batch_key!r}, which {data} lacks; "
                      f"its cells are predicted as batch 'unknown'.", stacklevel=1)
        batch_key = None
    exp = _read(data, k["perturbation_key"], k["control"], k["context_key"], batch_key, layer,
                backed, min_cells=1, exclude=k.get("exclude"), announce=False)
    perts = perturbations.split(",") if perturbations else m.vocabulary
    ctxs = contexts.split(",") if contexts else sorted(set(exp.contexts[exp.is_control]))
    conditions = (_held_out_conditions(split_file, fold, exp, m) if split_file is not None
                  else [(p, c) for c in ctxs for p in perts])
    from .cli_incontext import prompt_options

    options = prompt_options(m, prompt, prompt_filter)
    pred = m.predict(exp, conditions, n_cells=n_cells, include_controls=include_controls,
                     **options)
    with atomic_path(out_file) as tmp:
        pred.write_h5ad(tmp)
    err.print(f"wrote {out_file}: {pred.n_obs} cells x {pred.n_vars} genes")


cli_incontext.register(app)
cli_tools.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit with code 2."""
    shown, warnings.formatwarning = warnings.formatwarning, one_line_warning
    try:
        with raise_on_sigterm():
            app(args=argv, standalone_mode=True)
    except InputError as exc:
        err.print(f"[bold red]error:[/] {exc}", soft_wrap=True, highlight=False)
        sys.exit(2)
    except Terminated as exc:
        if all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK")):  # one line
            err.print(f"[bold red]stopped:[/] {stopped_line(exc.step)}", soft_wrap=True,
                      highlight=False)
        sys.exit(143)
    finally:
        warnings.formatwarning = shown


if __name__ == "__main__":
    main()

