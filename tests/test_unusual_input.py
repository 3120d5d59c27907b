"""Inputs that are surprising but must be handled: declared scales that contradict the data,
stray whitespace, other separators, empty cells (each refused or announced in one line), and
valid variety that must simply work (every common dtype and matrix format, in memory and
backed; unicode names; unused categories)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from _bad_input_common import _cli, tiny

from perturbcast.data import read_experiment
from perturbcast.errors import InputError


# ---- the Python API: declared scales ---------------------------------------------------------
def test_float_data_declared_as_counts():
    a = tiny()
    a.X = np.log1p(a.X.toarray().astype(np.float32))
    with pytest.raises(InputError, match="input_scale='counts' but"):
        read_experiment(a, "perturbation", "control", input_scale="counts")


def test_counts_declared_as_log1p():
    with pytest.raises(InputError, match="input_scale='log1p' but"):
        read_experiment(tiny(), "perturbation", "control", input_scale="log1p")


def test_labels_with_stray_whitespace(tmp_path, capsys):
    """'G0002 ' beside 'G0002': merged into one label, or refused naming the whitespace; never
    silently read as two perturbations."""
    a = tiny()
    a.obs["perturbation"] = [f" {p} " if p != "control" and i % 2 else p
                             for i, p in enumerate(a.obs.perturbation.astype(str))]
    try:
        exp = read_experiment(a, "perturbation", "control")
    except InputError as e:
        assert "stray whitespace" in str(e) and "strip" in str(e)
    else:
        assert exp.perturbation_names() == sorted({p.strip() for p in exp.perturbations}
                                                  - {"control"})


def test_combos_joined_by_another_separator_are_announced():
    a = tiny()
    a.obs["perturbation"] = [p.replace("+", "|") for p in a.obs.perturbation.astype(str)]
    with pytest.warns(UserWarning, match="contain '\\|'.*separator='\\|'"):
        read_experiment(a, "perturbation", "control")


def test_cells_without_expression_are_announced():
    a = tiny()
    x = a.X.toarray()
    x[:3] = 0
    a.X = sp.csr_matrix(x)
    with pytest.warns(UserWarning, match="3 cell\\(s\\) in X have zero total expression"):
        read_experiment(a, "perturbation", "control")


# ---- unusual but valid: every common matrix type, backed files, unicode names -------------
MATRICES = [(dtype, fmt) for dtype in ("int32", "int64", "float16", "float32", "float64")
            for fmt in ("csr", "csc", "dense")]


@pytest.mark.parametrize(("dtype", "fmt"), MATRICES, ids=[f"{d}-{f}" for d, f in MATRICES])
def test_matrix_dtypes_and_formats(dtype, fmt, tmp_path):
    if dtype == "float16" and fmt != "dense":
        pytest.skip("scipy.sparse has no float16 matrices")
    a = tiny()
    want = read_experiment(a, "perturbation", "control").rows(np.arange(a.n_obs))
    x = a.X.toarray().astype(dtype)
    a.X = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": np.asarray}[fmt](x)
    a.write_h5ad(tmp_path / "x.h5ad")
    for backed in (False, True):
        exp = read_experiment(tmp_path / "x.h5ad", "perturbation", "control", backed=backed)
        # float16 holds whole numbers exactly only up to 2048: the file itself is rounded
        tol = 1e-3 if dtype == "float16" else 1e-5
        np.testing.assert_allclose(exp.rows(np.arange(a.n_obs)), want, rtol=tol, atol=tol)


def test_unicode_names(tmp_path, capsys):
    a = tiny()
    names = {p: f"β-катенин_{p}_✓" for p in set(a.obs.perturbation) - {"control"}
             if "+" not in p}
    a.obs["perturbation"] = [("+".join(names[s] for s in p.split("+")) if p != "control"
                              else "контроль") for p in a.obs.perturbation.astype(str)]
    a.var_names = [f"ген{i}_α" for i in range(a.n_vars)]
    a.write_h5ad(tmp_path / "u.h5ad")
    code, err = _cli(["split", "--data", str(tmp_path / "u.h5ad"), "--perturbation-key",
                      "perturbation", "--control", "контроль", "--n-folds", "2",
                      "--out", str(tmp_path / "s.json")], capsys)
    assert code == 0, err
    folds = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))["folds"]
    assert any("β-катенин" in p for p, _ in folds[0]["test"])


def test_unused_categories_are_not_groups():
    a = tiny()
    a.obs["perturbation"] = a.obs.perturbation.astype("category").cat.add_categories(["G9999"])
    exp = read_experiment(a, "perturbation", "control")
    assert "G9999" not in exp.perturbation_names()
