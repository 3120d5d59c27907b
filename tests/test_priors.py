"""Gene-feature tables from priors: GO vectors, filling one table from another, joining."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from perturbcast.datasets.priors import (
    fill_missing,
    go_gene_vectors,
    go_gene_vectors_from_folder,
    join_tables,
    save_table,
)
from perturbcast.errors import InputError
from perturbcast.models.perturbation_features import load_embedding_table, load_embedding_tables

PRIORS = Path(__file__).resolve().parents[2] / "shared" / "priors"


def _write(path: Path, header: str, rows: list[str]) -> Path:
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def go_files(tmp_path):
    # two families: A1..A4 annotated under T:A (children T:A1, T:A2), B1..B4 under T:B;
    # each gene also gets a few "noise" terms shared across families
    ann = []
    for fam in "AB":
        for i in range(1, 5):
            child = f"T:{fam}{1 + i % 2}"
            ann += [f"{fam}{i}\t{child}\tIDA\tBP", f"{fam}{i}\tT:N{i % 3}\tIEA\tBP"]
    ann += ["A1\tT:N0\tIEA\tBP"]  # a duplicate line is ignored
    gene2go = _write(tmp_path / "gene2go.tsv.gz", "symbol\tgo_id\tevidence\tontology", ann)
    parents = _write(tmp_path / "go_parents.tsv.gz", "child\tparent\trelationship",
                     ["T:A1\tT:A\tisa", "T:A2\tT:A\tpart of", "T:B1\tT:B\tisa",
                      "T:B2\tT:B\tisa", "T:A\tT:ROOT\tisa", "T:B\tT:ROOT\tisa",
                      "T:N0\tT:B\tregulates"])  # 'regulates' is not followed
    genes = _write(tmp_path / "genes.tsv.gz", "entrez_id\tsymbol\taliases",
                   ["1\tA1\tOLDA1|A1", "2\tB1\tOLDB1|SHARED", "3\tB2\tSHARED|B2", "4\tZZ\tA2"])
    return gene2go, parents, genes


def _cos(names, vec, a, b):
    row = {n: i for i, n in enumerate(names)}
    u, v = vec[row[a]], vec[row[b]]
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


def test_go_vectors_follow_the_dag_and_aliases(go_files):
    gene2go, parents, genes = go_files
    names, vec = go_gene_vectors(gene2go, genes, parents, n_components=4, min_genes=2)
    assert vec.shape == (len(names), 4) and vec.dtype == np.float32
    # A1 and A2 share no direct family term (T:A2 vs T:A1) but share T:A after propagation
    # (TF-IDF down-weights the shared parent; cosines in the full space are 0.16 and 0)
    within = _cos(names, vec, "A1", "A2")
    assert within > 0.12 and _cos(names, vec, "A1", "B2") < 0.06
    assert _cos(names, vec, "A1", "A3") > 0.95  # same direct term
    # without propagation, the family signal between A1 and A2 is gone
    flat_names, flat = go_gene_vectors(gene2go, genes, None, n_components=4, min_genes=2)
    assert _cos(flat_names, flat, "A1", "A2") < 0.06
    # unambiguous aliases repeat their gene's row; ambiguous ones and symbols are not added
    row = {n: i for i, n in enumerate(names)}
    np.testing.assert_array_equal(vec[row["OLDA1"]], vec[row["A1"]])
    assert "SHARED" not in row and list(names).count("A2") == 1
    # deterministic
    again = go_gene_vectors(gene2go, genes, parents, n_components=4, min_genes=2)
    np.testing.assert_array_equal(again[1], vec)


def test_go_vectors_bad_inputs(tmp_path, go_files):
    bad = _write(tmp_path / "bad.tsv.gz", "gene\tterm", ["A1\tT:1"])
    with pytest.raises(InputError, match="lacks column"):
        go_gene_vectors(bad)
    with pytest.raises(InputError, match="not found"):
        go_gene_vectors(tmp_path / "absent.tsv.gz")
    with pytest.raises(InputError, match="too few"):
        go_gene_vectors(go_files[0], min_genes=100)


def test_fill_missing_recovers_a_linear_relation():
    rng = np.random.default_rng(0)
    donor_vec = rng.normal(size=(300, 6))
    true_map = rng.normal(size=(6, 3))
    primary_vec = donor_vec @ true_map + 0.5
    names = np.array([f"g{i}" for i in range(300)])
    # the primary table lacks the last 20 genes and has 5 of its own
    primary = (np.concatenate([names[:280], ["p0", "p1", "p2", "p3", "p4"]]),
               np.concatenate([primary_vec[:280], rng.normal(size=(5, 3))]))
    out_names, out_vec = fill_missing(primary, (names, donor_vec), ridge=1e-6)
    assert out_vec.shape == (305, 3)
    np.testing.assert_array_equal(out_names[:285], primary[0])
    np.testing.assert_allclose(out_vec[:285], primary[1], rtol=1e-6)
    np.testing.assert_allclose(out_vec[285:], primary_vec[280:], atol=1e-3)
    with pytest.raises(InputError, match="share"):
        fill_missing((names[:3], primary_vec[:3]), (names, donor_vec))


def test_join_and_comma_separated_tables(tmp_path):
    a = (np.array(["X", "Y"]), np.array([[1.0, 2.0], [3.0, 4.0]], np.float32))
    b = (np.array(["Y", "Z"]), np.array([[10.0], [30.0]], np.float32))
    names, vec = join_tables([a, b])
    assert list(names) == ["X", "Y", "Z"] and vec.shape == (3, 3)
    assert np.all(vec[2, :2] == 0) and vec[0, 2] == 0  # absent -> zeros
    np.testing.assert_allclose(vec[:2, :2], a[1] / a[1].std(), rtol=1e-6)
    save_table(tmp_path / "a.npz", *a)
    save_table(tmp_path / "b.npz", *b)
    n2, v2 = load_embedding_tables(f"{tmp_path / 'a.npz'},{tmp_path / 'b.npz'}")
    np.testing.assert_array_equal(n2, names)
    np.testing.assert_allclose(v2, vec)
    n1, v1 = load_embedding_table(tmp_path / "a.npz")
    np.testing.assert_array_equal(n1, a[0])
    with pytest.raises(InputError, match="one per name"):
        save_table(tmp_path / "c.npz", a[0], b[1][:1])
    assert not (tmp_path / "c.npz").exists() and len(list(tmp_path.iterdir())) == 2


@pytest.mark.skipif(not (PRIORS / "orghs_go" / "gene2go.tsv.gz").exists(),
                    reason="../shared/priors not present")
def test_go_vectors_on_the_real_annotations():
    names, vec = go_gene_vectors_from_folder(PRIORS / "orghs_go", n_components=64)
    assert len(names) > 18000
    row = {n: i for i, n in enumerate(names)}
    # MARCH8 (a Papalexi 2021 target) is a former symbol of MARCHF8
    np.testing.assert_array_equal(vec[row["MARCH8"]], vec[row["MARCHF8"]])
    assert _cos(names, vec, "STAT1", "STAT2") > _cos(names, vec, "STAT1", "RPL3") + 0.3
    assert _cos(names, vec, "RPL3", "RPL4") > _cos(names, vec, "RPL3", "JAK2") + 0.3


def test_gene_vectors_command(tmp_path, go_files, capsys):
    from perturbcast.cli import main as cli_main

    def main(args):
        with pytest.raises(SystemExit) as exc:
            cli_main(args)
        assert exc.value.code in (0, None), capsys.readouterr().err

    gene2go, parents, genes = go_files
    out = tmp_path / "go.npz"
    main(["gene-vectors", "--gene2go", str(gene2go), "--genes", str(genes), "--go-parents",
          str(parents), "--dim", "3", "--out", str(out)])
    names, vec = load_embedding_table(out)
    assert "OLDA1" in names and vec.shape == (len(names), 3)
    # --fill: a table in its own space, with the genes it lacks filled in
    rng = np.random.default_rng(1)
    primary = np.array(["A1", "A2", "A3", "A4", "B1", "B2", "B3"])
    pd_table = tmp_path / "lit.csv"
    rows = [f"{g},{a:.4f},{b:.4f}" for g, (a, b) in zip(primary, rng.normal(size=(7, 2)),
                                                         strict=True)]
    pd_table.write_text("gene,d0,d1\n" + "\n".join(rows) + "\n")
    filled = tmp_path / "lit_go.npz"
    main(["gene-vectors", "--gene2go", str(gene2go), "--dim", "3", "--fill", str(pd_table),
          "--out", str(filled)])
    names, vec = load_embedding_table(filled)
    assert list(names) == [*primary, "B4"] and vec.shape == (8, 2)
    # a bad file: one line, exit 2, nothing written
    with pytest.raises(SystemExit) as exc:
        cli_main(["gene-vectors", "--gene2go", str(tmp_path / "nope.tsv"), "--out",
              str(tmp_path / "x.npz")])
    assert exc.value.code == 2 and not (tmp_path / "x.npz").exists()
    assert "not found" in capsys.readouterr().err
