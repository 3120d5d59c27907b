"""Rebuild the built-in gene table (src/perturbcast/datasets/data/gene_vectors_default.npz).

Deterministic: the same priors give the same bytes (fixed zip timestamps, seeded SVD). Writes
the table and gene_vectors_default.json (sources, licences, dims, counts, sha256) beside it.

    python scripts/build_gene_table.py [--priors ../shared/priors] [--check]

``--check`` rebuilds into memory and compares with the shipped file instead of writing. Ends
with one line of key=value figures.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import tempfile
import time
from pathlib import Path

from perturbcast.datasets.gene_table import (
    DEFAULT_TABLE,
    GENE2WORD,
    GO_FOLDER,
    SOURCES,
    build_default_gene_table,
    write_table_npz,
)
from perturbcast.utils import write_json

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src/perturbcast/datasets/data"
INPUTS = (GENE2WORD, GO_FOLDER / "gene2go.tsv.gz", GO_FOLDER / "genes.tsv.gz",
          GO_FOLDER / "go_parents.tsv.gz")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--priors", default=str(ROOT.parent / "shared/priors"))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--check", action="store_true", help="compare with the shipped table")
    args = ap.parse_args()
    t0 = time.perf_counter()
    priors = Path(args.priors)
    table = build_default_gene_table(priors)
    out = Path(args.out)
    target = out / DEFAULT_TABLE
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            sha = write_table_npz(Path(tmp) / DEFAULT_TABLE, table)
        shipped = hashlib.sha256(target.read_bytes()).hexdigest()
        print(f"identical={sha == shipped} rebuilt_sha256={sha} shipped_sha256={shipped}")
        return
    sha = write_table_npz(target, table)
    n, d = table["vectors"].shape
    provenance = {
        "file": DEFAULT_TABLE, "sha256": sha, "bytes": target.stat().st_size,
        "built": datetime.date.today().isoformat(), "dims": int(d), "dtype": "float16",
        "n_symbols": int(n), "n_former_symbols": int(len(table["aliases"])),
        "construction": "gene2word vectors; GO-annotated genes gene2word lacks filled in from "
                        "64-d GO vectors (DAG-propagated, TF-IDF, SVD seed 0) by a ridge map "
                        "(perturbcast.datasets.priors.fill_missing); former symbols point to "
                        "their gene's row",
        "sources": SOURCES,
        "inputs": {str(p): hashlib.sha256((priors / p).read_bytes()).hexdigest()
                   for p in INPUTS},
    }
    write_json(out / DEFAULT_TABLE.replace(".npz", ".json"), provenance)
    print(f"symbols={n} former_symbols={len(table['aliases'])} dims={d} "
          f"bytes={target.stat().st_size} sha256={sha[:12]} "
          f"seconds={time.perf_counter() - t0:.1f}")


if __name__ == "__main__":
    main()
