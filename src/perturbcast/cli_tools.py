"""Commands around the models: ``evaluate``, ``atlas`` (and the in-silico screen),
``simulate``, ``convert``, ``report`` and ``gene-vectors``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .cli_options import (
    Backed,
    BatchKey,
    Control,
    CtxKey,
    Layer,
    Overwrite,
    PertKey,
    Seed,
    _check_out,
    _read,
    _read_real,
    err,
    out,
)
from .errors import InputError
from .utils import json_text


def evaluate(
    pred: Annotated[Path, typer.Option("--pred", help="Predicted .h5ad.")],
    real: Annotated[Path, typer.Option("--real", help="Real .h5ad, or a store from convert "
                                       "(only the predicted perturbations and contexts are "
                                       "read from a store).")],
    perturbation_key: PertKey, control: Control,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")],
    fdr: Annotated[str, typer.Option("--fdr", help="per_perturbation | global")] =
    "per_perturbation",
    epsilon: Annotated[float, typer.Option("--epsilon", help="LFC pseudocount (0 = cell-eval)")
                       ] = 0.0,
    context_key: Annotated[str | None, typer.Option(
        "--context-key", help="obs column of contexts in both files: score per (perturbation, "
        "context). Default: the predictions' context column when the real file has it.")] = None,
    only_predicted: Annotated[bool, typer.Option(
        "--only-predicted", help="Score the predicted perturbations alone (the real .h5ad's "
        "others are left out, announced; a store always reads only these).")] = False,
    baseline: Annotated[Path | None, typer.Option(
        "--baseline", help="Predictions of a reference model for the same conditions (cell-eval "
        "uses cell_mean's): adds the VCC score against it to summary.json.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """Score predictions like cell-eval: writes summary.json and per_perturbation.csv.

    Raw counts in --real are normalised like the predictions' input (recorded by predict).
    With --baseline, summary.json also has ``score`` (the VCC score), ``score_<metric>`` (its
    parts) and ``baseline_<metric>`` (the reference's own metrics)."""
    _check_out(out_dir, overwrite, is_dir=True)
    from .data.reading import open_h5ad
    from .eval import evaluate as run_eval
    from .eval.by_context import context_column
    from .eval.report import write_csv
    from .utils import write_json

    if fdr not in ("per_perturbation", "global"):
        raise InputError(f"--fdr {fdr!r} is not one of per_perturbation, global.")
    p_adata = open_h5ad(pred, False, "--pred")
    real_adata = _read_real(real, p_adata, perturbation_key, control, context_key,
                            only_predicted)
    ckey = context_column(p_adata, real_adata, context_key)  # one choice for both files
    from .eval.evaluate import ReferenceCache

    refs = ReferenceCache()  # the real side (DE tables), built once for --pred and --baseline
    res = run_eval(p_adata, real_adata, perturbation_key, control, fdr=fdr, epsilon=epsilon,
                   context_key=ckey, references=refs)
    summary = dict(res.summary)
    if baseline is not None:
        summary.update(_vcc_against(baseline, p_adata, real_adata, res, perturbation_key,
                                    control, fdr, epsilon, ckey, refs))
    else:
        err.print("no VCC score: it needs a reference model's predictions (--baseline, e.g. "
                  "cell_mean's for the same conditions).")
    out_dir.mkdir(parents=True, exist_ok=True)  # (checked above) each file written atomically
    write_json(out_dir / "summary.json", summary)
    write_csv(res.per_perturbation.reset_index(), out_dir / "per_perturbation.csv")
    out.print_json(json_text(summary))
    if res.by_context:
        err.print(f"scored per context ({len(res.by_context)}): {', '.join(res.by_context)}")
    err.print(f"wrote {out_dir}/summary.json and per_perturbation.csv")


def _vcc_against(path: Path, pred, real, res, perturbation_key: str, control: str, fdr: str,
                 epsilon: float, ckey: str | None, refs=None) -> dict:
    """The VCC score of ``res`` against the reference predictions in ``path`` (the same
    conditions as ``pred``), its parts, and the reference's own summary metrics. Scored per
    context (``ckey``), the score is the mean of the contexts' scores, as in a benchmark."""
    import numpy as np

    from .data.reading import open_h5ad
    from .eval import evaluate as run_eval
    from .eval.evaluate import VCC_METRICS, vcc_score

    base = open_h5ad(path, False, "--baseline")
    cols = [perturbation_key] + ([ckey] if ckey else [])
    missing = [c for c in cols if c not in base.obs]
    if missing:
        raise InputError(f"--baseline {path} has no obs column {missing[0]!r}, which --pred is "
                         f"scored by; predict the same conditions with the reference model.")
    mine, theirs = (set(map(tuple, a.obs[cols].astype(str).to_numpy().tolist()))
                    for a in (pred, base))
    if mine != theirs:
        raise InputError(f"--baseline {path} predicts other conditions than --pred "
                         f"({len(theirs - mine)} extra, {len(mine - theirs)} missing, by "
                         f"{' and '.join(cols)}); predict the same conditions with the "
                         f"reference model.")
    b_res = run_eval(base, real, perturbation_key, control, fdr=fdr, epsilon=epsilon,
                     context_key=ckey, references=refs)
    pairs = ([(res.by_context[c].summary, b_res.by_context[c].summary) for c in res.by_context]
             if res.by_context else [(res.summary, b_res.summary)])
    scored = [vcc_score(u, b) for u, b in pairs]
    parts = {m: float(np.mean([p[m] for _, p in scored])) for m in VCC_METRICS}
    return {"score": float(np.mean([v for v, _ in scored])),
            **{f"score_{m}": v for m, v in parts.items()},
            **{f"baseline_{m}": b_res.summary[m] for m in VCC_METRICS}, "baseline": str(path)}


def atlas(
    model_dir: Annotated[Path, typer.Option("--model", help="Saved model folder.")],
    data: Annotated[Path, typer.Option("--data", help=".h5ad with control cells.")],
    out_file: Annotated[Path, typer.Option("--out", help="Atlas .h5ad to write (summary CSV "
                                           "beside it).")],
    perturbations: Annotated[str, typer.Option(
        "--perturbations", help="Comma list, @file (one per line) or 'all' (model "
        "vocabulary).")] = "all",
    contexts: Annotated[str, typer.Option(
        "--contexts", help="Comma list, @file or 'all' (every context with controls).")] = "all",
    n_cells: Annotated[int, typer.Option("--n-cells", help="Cells per condition.")] = 100,
    rank_by: Annotated[Path | None, typer.Option(
        "--rank-by", help="In-silico screen target: signature (.json {up, down} or .csv "
        "gene,direction) or population (.h5ad); writes <out>.ranked.csv.")] = None,
    target_cells: Annotated[int, typer.Option(
        "--target-cells", help="Population targets: cells per side in the energy "
        "distance.")] = 500,
    target_context_key: Annotated[str | None, typer.Option(
        "--target-context-key", help="Population targets: obs column of contexts; each "
        "context is scored against its own target cells.")] = None,
    change_threshold: Annotated[float, typer.Option(
        "--change-threshold", help="|mean change| (log1p) counted as a changed gene.")] = 0.5,
    include_controls: Annotated[bool, typer.Option("--include-controls")] = False,
    top: Annotated[int, typer.Option("--top", help="Ranked rows to print.")] = 20,
    layer: Layer = None, backed: Backed = False, overwrite: Overwrite = False,
) -> None:
    """Predict a perturbation x context grid, streamed to one .h5ad; optionally rank it."""
    _check_out(out_file, overwrite, is_dir=False)
    from .atlas import parse_names, predict_atlas, print_ranked, read_target
    from .models.base import PerturbationModel

    m = PerturbationModel.load(model_dir)
    k = m.keys
    exp = _read(data, k["perturbation_key"], k["control"], k["context_key"], None, layer,
                backed, min_cells=1, exclude=k.get("exclude"), announce=False)
    perts = parse_names(perturbations, m.vocabulary, "perturbations")
    ctxs = parse_names(contexts, sorted(set(exp.contexts[exp.is_control])), "contexts")
    scorer = read_target(rank_by, max_cells=target_cells, seed=m.seed,
                         context_key=target_context_key) if rank_by else None
    res = predict_atlas(m, exp, perts, ctxs, n_cells, out_file, scorer=scorer,
                        change_threshold=change_threshold, include_controls=include_controls)
    err.print(f"wrote {res.path} ({len(res.summary)} conditions x {n_cells} cells) and "
              f"{res.summary_path}")
    if res.ranked is not None:
        print_ranked(res.ranked, out, top)
        err.print(f"wrote {res.ranked_path}")


def simulate(
    out_file: Annotated[Path, typer.Option("--out", help=".h5ad to write.")],
    seed: Seed = 0,
    n_genes: Annotated[int, typer.Option("--n-genes")] = 300,
    n_contexts: Annotated[int, typer.Option("--n-contexts")] = 3,
    overwrite: Overwrite = False,
) -> None:
    """Write a simulated screen (raw counts) to try the other commands on."""
    _check_out(out_file, overwrite, is_dir=False)
    from .datasets import simulate as sim
    from .utils import atomic_path

    adata = sim(seed=seed, n_genes=n_genes, n_contexts=n_contexts)
    del adata.uns["true_effects"]
    with atomic_path(out_file) as tmp:
        adata.write_h5ad(tmp)
    err.print(f"wrote {out_file}: {adata.n_obs} cells x {adata.n_vars} genes "
              f"(obs: perturbation, context, batch; control label 'control')")


def convert(
    inputs: Annotated[list[Path], typer.Argument(help="Input .h5ad file(s).")],
    perturbation_key: PertKey, control: Control,
    out_dir: Annotated[Path, typer.Option("--out", help="Store folder to write.")],
    context_key: CtxKey = None, batch_key: BatchKey = None,
    join: Annotated[str, typer.Option("--join", help="Genes of several files: inner "
                                      "(intersection) or outer (union; missing genes "
                                      "recorded per file).")] = "inner",
    chunk_size: Annotated[int, typer.Option("--chunk-size", help="Rows read at a time.")]
    = 16384,
    seed: Seed = 0, overwrite: Overwrite = False,
) -> None:
    """Stream h5ad files into a group-sorted out-of-core store (read it with --data STORE)."""
    from .data.convert import convert as run_convert

    _check_out(out_dir, overwrite, is_dir=True)

    path = run_convert(inputs, out_dir, perturbation_key, control, context_key, batch_key,
                       join=join, chunk_size=chunk_size, seed=seed)
    info = json.loads((path / "store.json").read_text())
    err.print(f"wrote {path}: {info['n_cells']} cells x {len(info['genes'])} genes, "
              f"{info['nnz']} stored values")


def report(
    directory: Annotated[Path, typer.Argument(help="A benchmark or demo output folder.")],
    overwrite: Overwrite = False,
) -> None:
    """Write report.html (one self-contained page with figures) from a benchmark folder."""
    from .eval.html_report import REPORT_NAME, write_html_report
    from .utils import check_output

    if directory.is_dir():  # the name is fixed (no --out): the only fix is --overwrite
        check_output(directory / REPORT_NAME, overwrite, is_dir=False, option=None)

    err.print(f"wrote {write_html_report(directory)}")


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
    seed: Seed = 0, overwrite: Overwrite = False,
) -> None:
    """Build gene vectors from GO annotations, for --param embeddings=TABLE."""
    _check_out(out_file, overwrite, is_dir=False)
    from .datasets.priors import fill_missing, go_gene_vectors, save_table
    from .models.perturbation_features import load_embedding_table

    names, vec = go_gene_vectors(gene2go, genes, parents, n_components=dim, seed=seed)
    if fill is not None:
        names, vec = fill_missing(load_embedding_table(fill), (names, vec))
    save_table(out_file, names, vec)
    err.print(f"wrote {out_file}: {len(names)} names x {vec.shape[1]} dims")


def register(app: typer.Typer) -> None:
    """Add these commands to the command line."""
    app.command()(evaluate)
    app.command()(atlas)
    app.command()(simulate)
    app.command()(convert)
    app.command()(report)
    app.command("gene-vectors")(gene_vectors)
