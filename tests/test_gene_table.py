"""The built-in gene table: shipped, loadable, with former symbols, rebuilt deterministically."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import pickle
import tomllib
from pathlib import Path

import numpy as np
import pytest

import perturbcast
from perturbcast.datasets.gene_table import (
    DEFAULT_TABLE,
    build_default_gene_table,
    default_table_path,
    load_default_gene_table,
    write_table_npz,
)
from perturbcast.errors import InputError
from perturbcast.models import MODELS, get_model
from perturbcast.models.perturbation_features import load_embedding_tables, resolve_embeddings


def test_default_table_ships_with_the_package():
    path = default_table_path()
    assert path.parent == Path(perturbcast.__file__).parent / "datasets" / "data"
    assert path.stat().st_size < 5_000_000
    names, vec = load_default_gene_table()
    assert vec.dtype == np.float32 and vec.shape == (len(names), 125)
    row = {n: i for i, n in enumerate(names)}
    for gene in ("STAT1", "MARCHF8", "MARCH8", "KLF1", "CD274", "TMSB4X"):
        assert gene in row, gene
    np.testing.assert_array_equal(vec[row["MARCH8"]], vec[row["MARCHF8"]])  # former symbol
    assert np.isfinite(vec).all() and len(set(names)) == len(names)
    # loading twice gives the same table, and callers cannot spoil the cached copy
    vec[row["STAT1"]] = 0
    again = load_default_gene_table()[1]
    assert np.abs(again[row["STAT1"]]).sum() > 0
    # provenance beside it names the file's bytes, the sources and the counts
    prov = json.loads(path.with_suffix(".json").read_text())
    assert prov["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert prov["dims"] == 125 and prov["n_symbols"] + prov["n_former_symbols"] == len(names)
    assert {"gene2word", "gene2go", "go"} <= set(prov["sources"])
    assert (path.parent / "README.md").exists()
    # the packaging keeps the data files
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["perturbcast.datasets"]
    assert "data/*.npz" in data and "data/*.json" in data


def _write(path: Path, header: str, rows: list[str]) -> None:
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join([header, *rows]) + "\n")


@pytest.fixture
def priors(tmp_path):
    """12 GO-annotated genes (G0..G11, 4 families); gene2word has G0..G8 and W1 (no GO)."""
    rng = np.random.default_rng(0)
    go = tmp_path / "orghs_go"
    go.mkdir()
    ann = [f"G{i}\tT:{i % 4}\tIDA\tBP" for i in range(12)]
    ann += [f"G{i}\tT:{4 + i % 3}\tIEA\tBP" for i in range(12)]
    _write(go / "gene2go.tsv.gz", "symbol\tgo_id\tevidence\tontology", ann)
    _write(go / "go_parents.tsv.gz", "child\tparent\trelationship",
           ["T:0\tT:R\tis_a", "T:1\tT:R\tis_a"])
    # OLD9 -> G9 (a former symbol); DUP names two genes (ambiguous); X1 is G10's alias but the
    # current symbol of an unannotated gene (ambiguous, left out)
    _write(go / "genes.tsv.gz", "entrez_id\tsymbol\taliases",
           ["1\tG9\tOLD9|DUP", "2\tG10\tDUP|X1", "3\tX1\t", "4\tW1\tOLDW"]
           + [f"{10 + i}\tG{i}\t" for i in range(9)] + ["30\tG11\t"])
    (tmp_path / "gene2word").mkdir()
    g2w_names = np.array([f"G{i}" for i in range(9)] + ["W1"])
    np.savez(tmp_path / "gene2word" / "gene2word_lsi125_human_pc.npz", genes=g2w_names,
             emb=rng.normal(size=(10, 6)).astype(np.float16))
    return tmp_path


def test_build_is_deterministic_and_keeps_unambiguous_former_symbols(priors, tmp_path):
    table = build_default_gene_table(priors)
    assert list(table["symbols"]) == sorted([f"G{i}" for i in range(12)] + ["W1"])
    assert table["vectors"].dtype == np.float16 and table["vectors"].shape == (13, 6)
    aliases = dict(zip(table["aliases"], table["symbols"][table["alias_rows"]], strict=True))
    assert aliases == {"OLD9": "G9", "OLDW": "W1"}  # DUP and X1 are ambiguous
    sha = [write_table_npz(tmp_path / f"t{i}.npz", build_default_gene_table(priors))
           for i in range(2)]
    assert sha[0] == sha[1] == hashlib.sha256((tmp_path / "t0.npz").read_bytes()).hexdigest()
    names, vec = load_default_gene_table(tmp_path / "t0.npz")
    row = {n: i for i, n in enumerate(names)}
    np.testing.assert_array_equal(vec[row["OLD9"]], vec[row["G9"]])
    with pytest.raises(InputError, match="lacks"):
        build_default_gene_table(tmp_path / "nowhere")


def test_default_is_the_embeddings_default_of_every_gene_model():
    for name in ("linear", "knn", "flow", "transition"):
        assert get_model(name).params["embeddings"] == "default", name
        assert getattr(MODELS[name], "takes_embeddings", False), name
    assert not getattr(MODELS["additive"], "takes_embeddings", False)


def test_embedding_spec_resolution(tmp_path):
    def train_table():
        return np.array(["g1"]), np.ones((1, 2), np.float32)

    names, vec, used = resolve_embeddings("default", ["STAT1", "G0001"], train_table, "m")
    assert used == "default" and vec.shape[1] == 125 and "STAT1" in set(names)
    with pytest.warns(UserWarning,
                      match="no row for any of the 2 single perturbations in training.*'train'"):
        names, vec, used = resolve_embeddings("default", ["G0001", "G0002"], train_table, "m")
    assert used == "train" and list(names) == ["g1"]
    assert resolve_embeddings("none", ["A"], train_table, "m")[1].shape == (0, 0)
    assert resolve_embeddings("train", ["A"], train_table, "m")[2] == "train"
    with pytest.raises(InputError, match="'trian' is neither 'default', 'train', 'none'"):
        resolve_embeddings("trian", ["A"], train_table, "m")
    # "default" joins with a user table like any other
    (tmp_path / "t.csv").write_text("name,a\nSTAT1,1.0\nMYGENE,2.0\n")
    names, vec = load_embedding_tables(f"default,{tmp_path / 't.csv'}")
    assert vec.shape[1] == 126 and "MYGENE" in set(names) and "MARCH8" in set(names)
    assert DEFAULT_TABLE.endswith(".npz")


def test_row_index_matches_names_then_upper_case_and_is_shared_by_equal_tables():
    from perturbcast.models.perturbation_features import PerturbationFeatures, row_index

    names = np.array(["abc", "ABC", "Tp53", "x"])  # 'abc'.upper() is already a name: kept
    assert row_index(names) == {"abc": 0, "ABC": 1, "Tp53": 2, "TP53": 2, "x": 3, "X": 3}
    vecs = np.eye(4, dtype=np.float32)
    a = PerturbationFeatures([], names, vecs, "+", "control")
    b = PerturbationFeatures([], names.copy(), vecs, "+", "control")
    assert a._row is b._row  # built once for equal names, and read-only
    with pytest.raises(TypeError):
        a._row["y"] = 0
    for copied in (pickle.loads(pickle.dumps(a)), copy.deepcopy(a)):  # models can be copied
        assert copied.feature_row("tp53") == 2 and copied._row is a._row
    assert a.feature_row("tp53") == a.feature_row("TP53") == 2  # matched case-insensitively
    assert a.feature_row("abc") == 0 and a.feature_row("ABC") == 1  # exact match first
    other = PerturbationFeatures([], np.array(["abc", "y"]), vecs[:2], "+", "control")
    assert other.feature_row("y") == 1 and other.feature_row("x") is None
    # the built-in table: every default-table gene baseline shares one index
    full, _ = load_default_gene_table()
    assert row_index(full) is row_index(load_default_gene_table()[0])
