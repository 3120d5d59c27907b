"""The built-in human gene table: a vector per gene symbol, shipped with the package.

It is what ``embeddings="default"`` means for every model that takes gene features. Built by
:func:`build_default_gene_table` (``scripts/build_gene_table.py``) from ``../shared/priors``:

1. gene2word literature vectors (PubMed LSI, 125-d, CC0; 14,519 human protein-coding genes);
2. GO vectors (:func:`~perturbcast.datasets.priors.go_gene_vectors_from_folder`: NCBI gene2go
   annotations, public domain, propagated up the GO DAG, CC BY 4.0; TF-IDF, SVD to 64-d);
3. :func:`~perturbcast.datasets.priors.fill_missing`: every GO-annotated gene gene2word lacks
   gets a row in gene2word's space, mapped from its GO vector.

Stored compactly: one float16 row per current gene symbol, and each unambiguous former symbol
(``MARCH8`` -> ``MARCHF8``) as a pointer to its gene's row. A name that is the current symbol
of a gene without a vector and the former symbol of another gene is left out (ambiguous).
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..utils import atomic_path

DEFAULT_TABLE = "gene_vectors_default.npz"
GENE2WORD = Path("gene2word") / "gene2word_lsi125_human_pc.npz"
GO_FOLDER = Path("orghs_go")
SOURCES = {
    "gene2word": "PyPI gene2word==2.0.0a1 (CC0 1.0; github.com/textrous/gene2word): PubMed LSI "
                 "125-d gene vectors, human protein-coding symbols",
    "gene2go": "NCBI Gene gene2go 2022-09-12 via Bioconductor org.Hs.eg.db 3.16.0 (NCBI data: "
               "public domain)",
    "go": "Gene Ontology go-basic.obo 2022-07-01 via Bioconductor GO.db 3.16.0 (GO: CC BY 4.0, "
          "geneontology.org)",
}


def default_table_path() -> Path:
    """Path of the built-in table inside the installed package."""
    ref = resources.files("perturbcast.datasets") / "data" / DEFAULT_TABLE
    return Path(str(ref))


@functools.lru_cache(maxsize=2)
def _load_compact(path: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise InputError(f"built-in gene table missing at {path}; reinstall perturbcast or "
                         "rebuild it with scripts/build_gene_table.py.")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def load_default_gene_table(path: str | os.PathLike | None = None
                            ) -> tuple[np.ndarray, np.ndarray]:
    """The built-in table with former symbols expanded to rows.

    Returns
    -------
    names : array of str, shape (n_symbols + n_aliases,)
    vectors : array of float32, shape (n_symbols + n_aliases, 125); an alias repeats its
        gene's row
    """
    names, vectors = _expanded(str(path or default_table_path()))
    return names.copy(), vectors.copy()  # the caller's to change; the cache stays as built


@functools.lru_cache(maxsize=2)
def _expanded(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Built once per process: every gene baseline fitted by ``base=auto``'s inner folds reads
    it (expanding it each time made the base choice ~10x slower)."""
    z = _load_compact(path)
    rows = np.concatenate([np.arange(len(z["symbols"])), z["alias_rows"]])
    names = np.concatenate([z["symbols"], z["aliases"]]).astype(str)
    vectors = z["vectors"][rows].astype(np.float32)
    names.flags.writeable = vectors.flags.writeable = False
    return names, vectors


def build_default_gene_table(priors: str | os.PathLike) -> dict[str, np.ndarray]:
    """Build the compact table from a priors folder (``gene2word/``, ``orghs_go/``).

    Returns
    -------
    dict with ``symbols`` (n,), ``vectors`` float16 (n, 125), ``aliases`` (m,) and
    ``alias_rows`` int32 (m,) (each alias's row in ``vectors``)
    """
    from ..models.perturbation_features import load_embedding_table
    from .priors import fill_missing, go_gene_vectors_from_folder

    priors = Path(priors)
    if not (priors / GENE2WORD).exists() or not (priors / GO_FOLDER / "gene2go.tsv.gz").exists():
        raise InputError(f"{priors} lacks {GENE2WORD} or {GO_FOLDER}/gene2go.tsv.gz; point "
                         "--priors at the shared priors folder.")
    g2w = load_embedding_table(priors / GENE2WORD)
    names, vectors = fill_missing(g2w, go_gene_vectors_from_folder(priors / GO_FOLDER))
    genes = pd.read_csv(priors / GO_FOLDER / "genes.tsv.gz", sep="\t", dtype=str)
    annotated = set(pd.read_csv(priors / GO_FOLDER / "gene2go.tsv.gz", sep="\t", dtype=str,
                                usecols=["symbol"]).symbol.dropna())
    own = set(g2w[0]) | annotated  # names with a vector of their own
    keep = np.array([n in own for n in names])
    symbols, vec = names[keep], vectors[keep]
    order = np.argsort(symbols, kind="stable")
    symbols, vec = symbols[order], vec[order]
    aliases, alias_rows = _former_symbols(symbols, genes)
    return {"symbols": symbols.astype(str), "vectors": vec.astype(np.float16),
            "aliases": aliases, "alias_rows": alias_rows}


def _former_symbols(symbols: np.ndarray, genes: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Aliases of the table's genes that are no gene's current symbol and name one gene."""
    row = {s: i for i, s in enumerate(symbols)}
    current = set(genes.symbol.dropna())
    target: dict[str, set[int]] = {}
    for sym, aliases in zip(genes.symbol, genes.aliases.fillna(""), strict=True):
        if sym in row:
            for a in aliases.split("|"):
                if a and a not in current:
                    target.setdefault(a, set()).add(row[sym])
    names = sorted(a for a, rows in target.items() if len(rows) == 1)
    return (np.asarray(names, dtype=str),
            np.asarray([next(iter(target[a])) for a in names], np.int32))


def write_table_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> str:
    """Write arrays as a compressed ``.npz`` with fixed timestamps (same input, same bytes);
    returns the file's sha256."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            arr = io.BytesIO()
            np.lib.format.write_array(arr, np.ascontiguousarray(arrays[key]),
                                      allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, arr.getvalue(), compresslevel=9)
    data = buf.getvalue()
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return hashlib.sha256(data).hexdigest()
