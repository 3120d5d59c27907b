"""The ``perturbcast`` command line: a thin layer over the Python API."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from . import cli_incontext
from .errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Predict single-cell perturbation responses and evaluate them like "
                       "cell-eval, fast.")
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
    "--param", help="Model parameter KEY=VALUE (repeatable), e.g. --param max_steps=500 "
    "--param embeddings=genes.csv; flow/transition parameters: see the README.")]
MinCells = Annotated[int, typer.Option("--min-cells", help="Smallest allowed group.")]
DropSmall = Annotated[bool, typer.Option("--drop-small-groups",
                                         help="Drop groups below --min-cells.")]


def _read(data, perturbation_key, control, context_key, batch_key, layer, backed=False,
          min_cells=3, drop_small_groups=False):
    from .data import read_experiment

    return read_experiment(data, perturbation_key, control, context_key=context_key,
                           batch_key=batch_key, layer=layer, backed=backed,
                           min_cells=min_cells, drop_small_groups=drop_small_groups)


def _models(spec: str | None) -> list[str]:
    from .models import BASELINES, get_model_class

    names = list(BASELINES) if not spec else [m.strip() for m in spec.split(",") if m.strip()]
    for n in names:
        get_model_class(n)
    return names


def _finish_benchmark(result, out_dir: Path, title: str, notes: list[str]) -> None:
    from .eval.report import print_summary, write_benchmark_report

    write_benchmark_report(result, out_dir, title, notes)
    print_summary(result.summary, title, result.best_baseline())
    err.print(f"wrote {out_dir}/summary.csv, per_perturbation.csv, scores.png, report.md")


def _parse_params(items: list[str] | None) -> dict:
    """['a=1', 'b=x.csv'] -> {'a': 1, 'b': 'x.csv'} (values read as JSON when they parse)."""
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InputError(f"--param {item!r} is not KEY=VALUE; e.g. --param max_steps=500.")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Report folder.")] = Path(
        "perturbcast-demo"),
    split: Annotated[str, typer.Option("--split", help="Split kind.")] = "combo",
    seed: Seed = 0,
) -> None:
    """Simulate a screen, run every model on a split, print the table and write a report."""
    from .benchmark import run_benchmark
    from .data import make_split, read_experiment
    from .datasets import simulate

    t0 = time.perf_counter()
    adata = simulate(seed=seed)
    exp = read_experiment(adata, "perturbation", "control", context_key="context",
                          batch_key="batch")
    sp = make_split(exp, split, n_folds=3, seed=seed)
    err.print(f"simulated {exp.describe()}; split {split} with {len(sp.folds)} folds")
    result = run_benchmark(exp, sp, _models(None), seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    sp.to_json(out_dir / "split.json")
    _finish_benchmark(result, out_dir, f"perturbcast demo (simulated, split={split})",
                      [f"Simulated data: {exp.describe()}.", f"Seed {seed}."])
    err.print(f"demo finished in {time.perf_counter() - t0:.1f}s")


@app.command()
def benchmark(
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")],
    data: Annotated[Path | None, typer.Option("--data", help="Input .h5ad file.")] = None,
    perturbation_key: Annotated[str | None, typer.Option("--perturbation-key")] = None,
    control: Annotated[str | None, typer.Option("--control")] = None,
    context_key: CtxKey = None,
    batch_key: BatchKey = None,
    layer: Layer = None,
    split: Annotated[str, typer.Option("--split", help="unseen-perturbation | unseen-context | "
                                       "combo | a split .json file")] = "unseen-perturbation",
    task: Annotated[str | None, typer.Option("--task", help="A real-task preset (sets keys, "
                                             "filter and split).")] = None,
    models: Annotated[str | None, typer.Option("--models", help="Comma-separated models "
                                               "(default: every baseline).")] = None,
    n_folds: Annotated[int, typer.Option("--n-folds")] = 5,
    fdr: Annotated[str, typer.Option("--fdr", help="per_perturbation | global")] =
    "per_perturbation",
    seed: Seed = 0,
    min_cells: MinCells = 3,
    drop_small_groups: DropSmall = False,
    param: Params = None,
) -> None:
    """Run models over all folds; write summary.csv and per_perturbation.csv.

    --param values apply to the non-baseline models (flow, transition)."""
    from .benchmark import run_benchmark
    from .data import Split, make_split
    from .datasets.tasks import load_task

    names = _models(models)
    if task:
        exp, sp = load_task(task, data)
    else:
        if data is None or perturbation_key is None or control is None:
            raise InputError("benchmark needs --task, or --data with --perturbation-key and "
                             "--control.")
        exp = _read(data, perturbation_key, control, context_key, batch_key, layer,
                    min_cells=min_cells, drop_small_groups=drop_small_groups)
        sp = (Split.from_json(split) if split.endswith(".json")
              else make_split(exp, split, n_folds=n_folds, seed=seed))
    err.print(f"{exp.describe()}; {len(sp.folds)} fold(s)")
    from .models import BASELINES

    params = _parse_params(param)
    result = run_benchmark(exp, sp, names, seed=seed, fdr=fdr,
                           model_params={n: params for n in names if n not in BASELINES})
    out_dir.mkdir(parents=True, exist_ok=True)
    sp.to_json(out_dir / "split.json")
    _finish_benchmark(result, out_dir, f"benchmark: {task or data}", [exp.describe()])


@app.command()
def split(
    data: DataOpt, perturbation_key: PertKey, control: Control,
    out_file: Annotated[Path, typer.Option("--out", help="Split .json to write.")],
    kind: Annotated[str, typer.Option("--split")] = "unseen-perturbation",
    context_key: CtxKey = None, n_folds: Annotated[int, typer.Option("--n-folds")] = 5,
    seed: Seed = 0,
) -> None:
    """Write a deterministic split (JSON) of the file's conditions."""
    from .data import make_split

    exp = _read(data, perturbation_key, control, context_key, None, None)
    sp = make_split(exp, kind, n_folds=n_folds, seed=seed)
    sp.to_json(out_file)
    err.print(f"wrote {out_file}: {len(sp.folds)} folds")


@app.command()
def train(
    data: DataOpt, perturbation_key: PertKey, control: Control,
    out_dir: Annotated[Path, typer.Option("--out", help="Model folder to write.")],
    model: Annotated[str, typer.Option("--model", help="Model name.")] = "linear",
    context_key: CtxKey = None, batch_key: BatchKey = None, layer: Layer = None,
    split_file: Annotated[Path | None, typer.Option("--split", help="Split .json.")] = None,
    fold: Annotated[str | None, typer.Option("--fold", help="Fold name or index.")] = None,
    seed: Seed = 0, backed: Backed = False, param: Params = None,
) -> None:
    """Fit a model (on a fold's training cells, or all cells) and save it."""
    from .data import Split
    from .models import get_model

    exp = _read(data, perturbation_key, control, context_key, batch_key, layer, backed)
    mask = None
    if split_file is not None:
        sp = Split.from_json(split_file)
        names = [f.name for f in sp.folds]
        key = fold or names[0]
        chosen = sp.folds[int(key)] if key.isdigit() and int(key) < len(names) else next(
            (f for f in sp.folds if f.name == key), None)
        if chosen is None:
            raise InputError(f"fold {key!r} not in {split_file}; folds: {', '.join(names)}.")
        mask = chosen.train_mask(exp)
    m = get_model(model, seed=seed, **_parse_params(param)).fit(exp, mask)
    m.save(out_dir)
    err.print(f"saved {model} model to {out_dir} ({len(m.genes)} genes, "
              f"{len(m.vocabulary)} training perturbations)")


@app.command()
def predict(
    model_dir: Annotated[Path, typer.Option("--model", help="Saved model folder.")],
    data: Annotated[Path, typer.Option("--data", help=".h5ad with control cells.")],
    out_file: Annotated[Path, typer.Option("--out", help="Predictions .h5ad to write.")],
    perturbations: Annotated[str | None, typer.Option(
        "--perturbations", help="Comma-separated labels (default: model vocabulary).")] = None,
    contexts: Annotated[str | None, typer.Option(
        "--contexts", help="Comma-separated contexts (default: all with controls).")] = None,
    n_cells: Annotated[int, typer.Option("--n-cells", help="Cells per condition.")] = 100,
    include_controls: Annotated[bool, typer.Option("--include-controls")] = False,
    layer: Layer = None, backed: Backed = False,
    prompt: Annotated[Path | None, typer.Option(
        "--prompt", help="incontext: .h5ad with example cells of each perturbation (and "
        "controls); default: the model's training cells.")] = None,
    prompt_filter: Annotated[list[str] | None, typer.Option(
        "--prompt-filter", help="incontext: keep prompt cells with obs KEY=VALUE "
        "(repeatable).")] = None,
) -> None:
    """Predict cells for perturbations from the control cells of a file (model's keys)."""
    from .models.base import PerturbationModel
    from .utils import atomic_path

    m = PerturbationModel.load(model_dir)
    k = m.keys
    exp = _read(data, k["perturbation_key"], k["control"], k["context_key"], None, layer,
                backed, min_cells=1)
    perts = perturbations.split(",") if perturbations else m.vocabulary
    ctxs = contexts.split(",") if contexts else sorted(set(exp.contexts[exp.is_control]))
    from .cli_incontext import prompt_options

    options = prompt_options(m, prompt, prompt_filter)
    pred = m.predict(exp, [(p, c) for c in ctxs for p in perts], n_cells=n_cells,
                     include_controls=include_controls, **options)
    with atomic_path(out_file) as tmp:
        pred.write_h5ad(tmp)
    err.print(f"wrote {out_file}: {pred.n_obs} cells x {pred.n_vars} genes")


@app.command()
def evaluate(
    pred: Annotated[Path, typer.Option("--pred", help="Predicted .h5ad.")],
    real: Annotated[Path, typer.Option("--real", help="Real .h5ad.")],
    perturbation_key: PertKey, control: Control,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")],
    fdr: Annotated[str, typer.Option("--fdr", help="per_perturbation | global")] =
    "per_perturbation",
    epsilon: Annotated[float, typer.Option("--epsilon", help="LFC pseudocount (0 = cell-eval)")
                       ] = 0.0,
) -> None:
    """Score predictions like cell-eval: writes summary.json and per_perturbation.csv."""
    import anndata as ad

    from .eval import Reference
    from .eval import evaluate as run_eval
    from .eval.report import write_csv
    from .utils import write_json

    adatas = []
    for p in (pred, real):
        if not p.exists():
            raise InputError(f"file not found: {p}")
        adatas.append(ad.read_h5ad(p))
    ref = Reference(adatas[1], perturbation_key, control, fdr=fdr, epsilon=epsilon)
    res = run_eval(adatas[0], ref)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "summary.json", res.summary)
    write_csv(res.per_perturbation.reset_index(), out_dir / "per_perturbation.csv")
    out.print_json(json.dumps({k: v for k, v in res.summary.items()}, default=str))
    err.print(f"wrote {out_dir}/summary.json and per_perturbation.csv")


@app.command()
def simulate(
    out_file: Annotated[Path, typer.Option("--out", help=".h5ad to write.")],
    seed: Seed = 0,
    n_genes: Annotated[int, typer.Option("--n-genes")] = 300,
    n_contexts: Annotated[int, typer.Option("--n-contexts")] = 3,
) -> None:
    """Write a simulated screen (raw counts) to try the other commands on."""
    from .datasets import simulate as sim
    from .utils import atomic_path

    adata = sim(seed=seed, n_genes=n_genes, n_contexts=n_contexts)
    del adata.uns["true_effects"]
    with atomic_path(out_file) as tmp:
        adata.write_h5ad(tmp)
    err.print(f"wrote {out_file}: {adata.n_obs} cells x {adata.n_vars} genes "
              f"(obs: perturbation, context, batch; control label 'control')")


@app.command("gene-vectors")
def gene_vectors(
    gene2go: Annotated[Path, typer.Option("--gene2go", help="GO annotations .tsv(.gz): "
                                          "symbol, go_id.")],
    out_file: Annotated[Path, typer.Option("--out", help=".npz table to write.")],
    genes: Annotated[Path | None, typer.Option("--genes", help="Gene table .tsv(.gz): symbol, "
                                               "aliases ('|'-joined); adds former symbols.")]
    = None,
    parents: Annotated[Path | None, typer.Option("--go-parents", help="GO DAG .tsv(.gz): "
                                                 "child, parent, relationship.")] = None,
    dim: Annotated[int, typer.Option("--dim", help="Vector size.")] = 64,
    fill: Annotated[Path | None, typer.Option("--fill", help="Instead write this table "
                                              "(csv/parquet/npz), with the genes it lacks filled "
                                              "in from their GO vectors.")] = None,
    seed: Seed = 0,
) -> None:
    """Build gene vectors from GO annotations, for --param embeddings=TABLE."""
    from .datasets.priors import fill_missing, go_gene_vectors, save_table
    from .models.perturbation_features import load_embedding_table

    names, vec = go_gene_vectors(gene2go, genes, parents, n_components=dim, seed=seed)
    if fill is not None:
        names, vec = fill_missing(load_embedding_table(fill), (names, vec))
    save_table(out_file, names, vec)
    err.print(f"wrote {out_file}: {len(names)} names x {vec.shape[1]} dims")


cli_incontext.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit with code 2."""
    try:
        app(args=argv, standalone_mode=True)
    except InputError as exc:
        err.print(f"[bold red]error:[/] {exc}", soft_wrap=True, highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()

