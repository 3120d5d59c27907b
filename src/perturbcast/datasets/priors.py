"""Gene-feature tables built from gene-knowledge priors, for perturbing genes unseen in training.

The set models take a ``name -> vector`` table (``embeddings=``); this module builds such
tables from public annotation files and joins several into one:

- :func:`go_gene_vectors`: a gene's GO annotations (propagated to ancestor terms along ``is_a``
  and ``part_of``), TF-IDF weighted, reduced by truncated SVD. Any annotated gene gets a vector,
  so it covers targets that literature-vector tables miss. Former symbols (aliases) get their
  gene's row, e.g. ``MARCH8`` -> ``MARCHF8``.
  :func:`go_gene_vectors_from_folder` reads the three files of an ``orghs_go``-style folder.
- :func:`fill_missing`: give the names only a second table has a row in the first table's
  space (a ridge map fitted on the names both share).
- :func:`join_tables`: several tables side by side (each scaled to unit spread, zeros where a
  table lacks a name), so one gene's vector can come from more than one source.
- :func:`save_table`: write a table as ``.npz`` (``names``, ``emb``) atomically.

Input format (the ``orghs_go`` export, tab-separated, gzip allowed, header row):
``gene2go``: columns ``symbol, go_id`` (others ignored); ``genes``: ``symbol, aliases``
(``|``-joined); ``go_parents``: ``child, parent, relationship``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from ..errors import InputError
from ..utils import atomic_path

PROPAGATE_RELATIONS = ("isa", "is_a", "part of", "part_of")


def _read_tsv(path: str | os.PathLike, needed: Sequence[str]) -> pd.DataFrame:
    if not os.path.exists(path):
        raise InputError(f"prior file not found: {path}; check the path.")
    df = pd.read_csv(path, sep="\t", dtype=str)
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise InputError(f"{os.path.basename(path)} lacks column(s) {missing}; it has "
                         f"{list(df.columns)[:8]}.")
    return df


def _ancestors(parents: pd.DataFrame, terms: np.ndarray) -> dict[str, set[str]]:
    """Each term's ancestors (itself included) along is_a / part_of edges."""
    keep = parents.relationship.str.lower().isin(PROPAGATE_RELATIONS)
    up: dict[str, list[str]] = {}
    for child, parent in zip(parents.child[keep], parents.parent[keep], strict=True):
        up.setdefault(child, []).append(parent)

    def visit(term: str) -> set[str]:
        stack, seen = [term], {term}
        while stack:  # iterative: GO is deep enough to trouble recursion
            for p in up.get(stack.pop(), ()):
                if p not in seen:
                    seen.add(p)
                    stack.append(p)
        return seen

    return {t: visit(t) for t in terms}


def go_gene_vectors(gene2go: str | os.PathLike, genes: str | os.PathLike | None = None,
                    go_parents: str | os.PathLike | None = None, n_components: int = 64,
                    min_genes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gene vectors from GO annotations.

    Parameters
    ----------
    gene2go : annotation table (``symbol``, ``go_id``)
    genes : gene table (``symbol``, ``aliases``); when given, each unambiguous alias that is not
        itself an annotated symbol gets its gene's row
    go_parents : GO DAG edges; when given, annotations are propagated to ancestor terms
    n_components : vector size (truncated SVD rank)
    min_genes : terms annotated to fewer genes are dropped

    Returns
    -------
    names : array of str, shape (n_names,)
    vectors : array of float32, shape (n_names, n_components); rows of aliases repeat their
        gene's row
    """
    ann = _read_tsv(gene2go, ("symbol", "go_id")).dropna(subset=["symbol", "go_id"])
    ann = ann[["symbol", "go_id"]].drop_duplicates()
    if go_parents is not None:
        anc = _ancestors(_read_tsv(go_parents, ("child", "parent", "relationship")),
                         ann.go_id.unique())
        ann = pd.DataFrame([(s, a) for s, t in zip(ann.symbol, ann.go_id, strict=True)
                            for a in anc[t]], columns=["symbol", "go_id"]).drop_duplicates()
    df = ann.go_id.value_counts()
    ann = ann[ann.go_id.isin(df.index[df >= min_genes])]
    symbols, gi = np.unique(ann.symbol.to_numpy(), return_inverse=True)
    terms, ti = np.unique(ann.go_id.to_numpy(), return_inverse=True)
    k = min(n_components, min(len(symbols), len(terms)) - 1)
    if k < 1:
        raise InputError(f"{os.path.basename(gene2go)}: {len(symbols)} genes and {len(terms)} "
                         f"terms with >= {min_genes} genes; too few for gene vectors.")
    idf = np.log(len(symbols) / df[terms].to_numpy(np.float64))
    m = sp.csr_matrix((idf[ti], (gi, ti)), shape=(len(symbols), len(terms)))
    norms = np.sqrt(np.asarray(m.multiply(m).sum(1))).ravel()
    m = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ m
    v0 = np.random.default_rng(seed).standard_normal(min(m.shape))
    u, s, _ = svds(m, k=k, v0=v0)
    order = np.argsort(-s)
    vec = u[:, order] * s[order]
    vec *= np.sign(vec[np.abs(vec).argmax(0), np.arange(k)])  # a fixed sign per component
    names = symbols
    if genes is not None:
        names, vec = _add_aliases(symbols, vec, _read_tsv(genes, ("symbol", "aliases")))
    return names.astype(str), vec.astype(np.float32)


def go_gene_vectors_from_folder(folder: str | os.PathLike, n_components: int = 64,
                                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """:func:`go_gene_vectors` from a folder laid out like the ``orghs_go`` export:
    ``gene2go.tsv.gz``, ``genes.tsv.gz`` (aliases) and ``go_parents.tsv.gz`` (propagation)."""
    folder = Path(folder)
    return go_gene_vectors(folder / "gene2go.tsv.gz", folder / "genes.tsv.gz",
                           folder / "go_parents.tsv.gz", n_components=n_components, seed=seed)


def _add_aliases(symbols: np.ndarray, vec: np.ndarray, genes: pd.DataFrame
                 ) -> tuple[np.ndarray, np.ndarray]:
    row = {s: i for i, s in enumerate(symbols)}
    target: dict[str, set[int]] = {}
    for sym, aliases in zip(genes.symbol, genes.aliases.fillna(""), strict=True):
        if sym in row:
            for a in aliases.split("|"):
                if a and a not in row:
                    target.setdefault(a, set()).add(row[sym])
    extra = sorted(a for a, rows in target.items() if len(rows) == 1)  # unambiguous only
    rows = [next(iter(target[a])) for a in extra]
    return np.concatenate([symbols, np.asarray(extra, dtype=symbols.dtype)]), \
        np.concatenate([vec, vec[rows]])


def join_tables(tables: Sequence[tuple[np.ndarray, np.ndarray]]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Join tables side by side over the union of their names.

    Each table is scaled to unit standard deviation first, so no source dominates by scale; a
    name absent from a table gets zeros in that table's columns. Names match exactly.

    Returns names (n,) and vectors float32 (n, sum of the tables' widths).
    """
    names = np.asarray(sorted({str(n) for t, _ in tables for n in t}), dtype=str)
    where = {n: i for i, n in enumerate(names)}
    blocks = []
    for t, v in tables:
        block = np.zeros((len(names), v.shape[1]), np.float32)
        block[[where[str(n)] for n in t]] = v / (v.std() + 1e-12)
        blocks.append(block)
    return names, np.concatenate(blocks, 1)


def fill_missing(primary: tuple[np.ndarray, np.ndarray], donor: tuple[np.ndarray, np.ndarray],
                 ridge: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Give names that only ``donor`` has a row in ``primary``'s space.

    A ridge map from donor vectors to primary vectors is fitted on the names both tables share
    and applied to the donor-only names, so the table keeps ``primary``'s width and meaning and
    gains coverage (e.g. literature vectors filled in from GO vectors).

    Returns names (n_primary + n_added,) and vectors float32 (same rows, primary's width).
    """
    p_names, p_vec = (np.asarray(primary[0], dtype=str), np.asarray(primary[1], np.float64))
    d_names, d_vec = (np.asarray(donor[0], dtype=str), np.asarray(donor[1], np.float64))
    p_row = {n: i for i, n in enumerate(p_names)}
    shared = [i for i, n in enumerate(d_names) if n in p_row]
    added = np.array([i for i, n in enumerate(d_names) if n not in p_row], dtype=np.int64)
    if len(shared) <= d_vec.shape[1]:
        raise InputError(f"the tables share {len(shared)} names, too few to map one onto the "
                         f"other ({d_vec.shape[1]} donor columns); check that both use symbols.")
    x = d_vec[shared]
    y = p_vec[[p_row[d_names[i]] for i in shared]]
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    w = np.linalg.solve(xc.T @ xc + ridge * len(shared) * np.eye(x.shape[1]), xc.T @ (y - my))
    filled = my + (d_vec[added] - mx) @ w
    return (np.concatenate([p_names, d_names[added]]),
            np.concatenate([p_vec, filled]).astype(np.float32))


def save_table(path: str | os.PathLike, names: np.ndarray, vectors: np.ndarray) -> None:
    """Write a ``names``/``emb`` table as ``.npz`` (temp file, then rename)."""
    if len(names) != len(vectors):
        raise InputError(f"{len(names)} names but {len(vectors)} vectors; give one per name.")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, names=np.asarray(names, dtype=str),
                            emb=np.asarray(vectors, np.float32))
