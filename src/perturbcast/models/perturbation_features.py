"""From perturbation labels to encoder inputs: learned ids, feature vectors, dose.

Every component (single perturbation) seen in training gets a learned embedding id. A
component may also have a fixed feature vector, from

- the built-in human gene table (``embeddings="default"``, the default of every model that takes
  gene features; see :mod:`perturbcast.datasets.gene_table`);
- a user table (``embeddings=`` a CSV / TSV / parquet / npz file: name -> vector) for genes or
  compounds, e.g. literature gene vectors or GO-derived features; or
- the training data (``embeddings="train"``): the target gene's row of the top principal
  components of the training delta matrix (genes x conditions) next to its row of the top
  principal components of control expression (genes x cells); each model builds its own.

:func:`resolve_embeddings` turns a spec (``"default" | "train" | "none" |`` path(s)) into the
table a model uses; every model that takes gene features goes through it.

A component with neither (unseen in training and absent from the features) cannot be encoded:
:meth:`PerturbationFeatures.encode` raises a one-line error naming it, never a silent zero.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd

from ..data.labels import components
from ..errors import InputError

NAME_KEYS = ("names", "genes", "index", "perturbations", "symbols")
VECTOR_KEYS = ("emb", "embeddings", "vectors", "X", "features")
DEFAULT, TRAIN, NONE = "default", "train", "none"


def load_embedding_table(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a name -> vector table; returns (names (n,), vectors float32 (n, d)).

    CSV/TSV: first column names, other columns numbers. Parquet: string index, or a first string
    column. NPZ: a names array (one of ``names, genes, index, perturbations, symbols``) and a
    matrix (``emb, embeddings, vectors, X, features``). Rows with NaN are dropped.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"embedding table not found: {path}; check the path.")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=True) as z:
            nk = next((k for k in NAME_KEYS if k in z.files), None)
            vk = next((k for k in VECTOR_KEYS if k in z.files), None)
            if nk is None or vk is None:
                raise InputError(f"{path.name} holds {z.files}; an embedding npz needs a names "
                                 f"array ({'/'.join(NAME_KEYS)}) and a matrix "
                                 f"({'/'.join(VECTOR_KEYS)}).")
            names, vectors = z[nk].astype(str), z[vk].astype(np.float32)
    elif suffix in (".csv", ".tsv", ".txt", ".parquet", ".pq"):
        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
            if df.index.dtype == object:
                df = df.reset_index()
        else:
            df = pd.read_csv(path, sep="\t" if suffix in (".tsv", ".txt") else ",")
        if df.shape[1] < 2:
            raise InputError(f"{path.name} has {df.shape[1]} column(s); an embedding table needs "
                             "a name column followed by numeric columns.")
        names = df.iloc[:, 0].astype(str).to_numpy()
        num = df.iloc[:, 1:].apply(pd.to_numeric, errors="coerce")
        vectors = num.to_numpy(np.float32)
    else:
        raise InputError(f"unsupported embedding table {path.name}; use .csv, .tsv, .parquet "
                         "or .npz.")
    if vectors.ndim != 2 or len(names) != vectors.shape[0]:
        raise InputError(f"{path.name}: {len(names)} names but vectors of shape "
                         f"{vectors.shape}; give one row per name.")
    keep = np.isfinite(vectors).all(1)
    return names[keep], vectors[keep]


def load_embedding_tables(spec: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One table, or several comma-separated ones joined side by side (each scaled to unit
    spread, zeros where a table lacks a name); a name found in any table has features.
    ``default`` (alone or as one of the parts) is the built-in human gene table."""
    from ..datasets.priors import join_tables

    parts = [s.strip() for s in str(spec).split(",")]
    if len(parts) == 1 or Path(spec).exists():
        return _load_one(str(spec).strip())
    return join_tables([_load_one(s) for s in parts if s])


def _load_one(part: str) -> tuple[np.ndarray, np.ndarray]:
    if part == DEFAULT:
        from ..datasets.gene_table import load_default_gene_table

        return load_default_gene_table()
    if not Path(part).exists():
        raise InputError(f"embeddings: {part!r} is neither {DEFAULT!r}, {TRAIN!r}, {NONE!r} nor "
                         "an existing table file (csv/tsv/parquet/npz); check the path.")
    return load_embedding_table(part)


def resolve_embeddings(spec: str | None, components: Sequence[str],
                       train_table: Callable[[], tuple[np.ndarray, np.ndarray]], model: str,
                       ) -> tuple[np.ndarray, np.ndarray, str]:
    """The feature table a model uses for an ``embeddings=`` spec.

    Parameters
    ----------
    spec : "default" (built-in human gene table), "train" (the model's features from training
        data), "none", or table path(s), comma-separated
    components : the training perturbations' components (single perturbations)
    train_table : builds the model's training-data table, returns (names (n,), vectors (n, d))
    model : model name, for messages

    Returns
    -------
    names : array of str, shape (n,)
    vectors : array of float32, shape (n, d) (d = 0 for "none")
    used : the spec used; "train" when "default" has a row for none of ``components`` (e.g.
        simulated or non-human genes, compounds), which is announced with a warning
    """
    spec = NONE if spec is None else str(spec).strip()
    if spec == NONE:
        return np.zeros(0, str), np.zeros((0, 0), np.float32), NONE
    if spec == TRAIN:
        return (*train_table(), TRAIN)
    names, vectors = load_embedding_tables(spec)
    if spec == DEFAULT and len(components) and not _covers_any(names, components):
        warnings.warn(f"{model}: the built-in gene table (embeddings='default') has no row for "
                      f"any of the {len(components)} single perturbations in training "
                      f"(combinations counted by their parts; e.g. "
                      f"{sorted(components)[0]!r}); using embeddings='train' (features from the "
                      "training data) instead; pass embeddings=TABLE for your own vectors.",
                      stacklevel=2)
        return (*train_table(), TRAIN)
    return names, vectors, spec


def _covers_any(names: np.ndarray, components: Sequence[str]) -> bool:
    """Whether the table ``names`` has a row for any of ``components`` (case-insensitive);
    its :func:`row_index` is the one the model's features then share."""
    have = row_index(names)
    return any(c in have or c.upper() in have for c in components)


def training_gene_features(genes: np.ndarray, deltas: np.ndarray, ctrl_cells: np.ndarray,
                           k: int = 16) -> np.ndarray:
    """Gene features from training data, shape (n_genes, <= 2k).

    Parameters
    ----------
    deltas : array, shape (n_conditions, n_genes); training condition means - control means
    ctrl_cells : array, shape (n_cells, n_genes); control cells (log1p)
    """
    parts = []
    for mat in (deltas, ctrl_cells):
        if mat.shape[0] < 3:
            continue
        y = (mat - mat.mean(0)).T.astype(np.float64)  # genes x observations
        u, s, _ = np.linalg.svd(y, full_matrices=False)
        r = max(1, min(k, mat.shape[0] - 1))
        f = u[:, :r] * s[:r]
        parts.append(f / (f.std() + 1e-12))
    if not parts:
        return np.zeros((len(genes), 0), np.float32)
    return np.concatenate(parts, 1).astype(np.float32)


_ROW_INDEX: dict[bytes, Mapping[str, int]] = {}


def row_index(names: np.ndarray) -> Mapping[str, int]:
    """Row of each name (the last row of a repeated name), then of each upper-cased name that
    is not a name itself (its first row); read-only.

    Shared by tables with the same names (a hash of their bytes): ``base=auto`` fits a gene
    baseline per inner fold, each with the whole built-in table (~10^5 names).
    """
    names = np.ascontiguousarray(names, dtype=str)
    key = hashlib.blake2b(names.tobytes(), digest_size=16).digest() + str(names.dtype).encode()
    row = _ROW_INDEX.get(key)
    if row is None:
        listed = names.tolist()
        built = {n: i for i, n in enumerate(listed)}
        for i, n in enumerate(listed):
            built.setdefault(n.upper(), i)
        row = MappingProxyType(built)
        if len(_ROW_INDEX) >= 4:
            _ROW_INDEX.pop(next(iter(_ROW_INDEX)), None)
        _ROW_INDEX[key] = row
    return row


class PerturbationFeatures:
    """Vocabulary of components, their learned ids and feature vectors.

    Parameters
    ----------
    learned : components seen in training (their ids are 1..n in this order)
    feature_names, feature_vectors : the feature table (names matched exactly, then
        case-insensitively), vectors of shape (n, n_features)
    separator, control : how labels split into components
    """

    def __init__(self, learned: list[str], feature_names: np.ndarray,
                 feature_vectors: np.ndarray, separator: str, control: str) -> None:
        self.learned = list(learned)
        self.learned_id = {c: i + 1 for i, c in enumerate(self.learned)}
        self.feature_names = np.asarray(feature_names, dtype=str)
        self.feature_vectors = np.asarray(feature_vectors, np.float32)
        self.separator, self.control = separator, control
        self._row = row_index(self.feature_names)

    def __getstate__(self) -> dict:  # the shared read-only index is rebuilt, not pickled
        return {k: v for k, v in self.__dict__.items() if k != "_row"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._row = row_index(self.feature_names)

    @property
    def n_features(self) -> int:
        return self.feature_vectors.shape[1]

    def components(self, label: str) -> tuple[str, ...]:
        return components(label, self.separator, self.control)

    def feature_row(self, comp: str) -> int | None:
        return self._row.get(comp, self._row.get(comp.upper()))

    def check(self, labels: list[str]) -> None:
        """Raise a one-line error for components with neither a learned id nor features."""
        bad = sorted({c for lab in labels for c in self.components(lab)
                      if c not in self.learned_id and self.feature_row(c) is None})
        if bad:
            names = ", ".join(repr(b) for b in bad[:5]) + (" ..." if len(bad) > 5 else "")
            raise InputError(f"perturbation(s) {names} were not seen in training and have no "
                             "embedding (no learned vector, no feature row); pass an embedding "
                             "table with a row for each (--param embeddings=TABLE, a csv/"
                             "parquet/npz of name -> vector).")

    def encode(self, labels: list[str], doses: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Encoder inputs for a list of perturbation labels.

        Returns learned_idx (n, k) int64, features (n, k, n_features) float32, has_features
        (n, k) bool and dose (n,) float32, where k is the largest number of components.
        """
        self.check(labels)
        comps = [self.components(lab) for lab in labels]
        k = max([len(c) for c in comps] + [1])
        n = len(labels)
        learned_idx = np.zeros((n, k), np.int64)
        feats = np.zeros((n, k, self.n_features), np.float32)
        has = np.zeros((n, k), bool)
        for i, cs in enumerate(comps):
            for j, c in enumerate(cs):
                learned_idx[i, j] = self.learned_id.get(c, 0)
                row = self.feature_row(c)
                if row is not None and self.n_features:
                    feats[i, j] = self.feature_vectors[row]
                    has[i, j] = True
        dose = np.zeros(n, np.float32) if doses is None else np.log1p(
            np.asarray(doses, np.float32))
        return {"learned_idx": learned_idx, "features": feats, "has_features": has,
                "dose": dose}

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to save; repeated rows (former symbols of one gene) are stored once."""
        vec = self.feature_vectors
        unique, rows = (np.unique(vec, axis=0, return_inverse=True) if vec.size else
                        (vec, np.arange(len(vec))))
        return {"pf_learned": np.asarray(self.learned, dtype=str),
                "pf_feature_names": self.feature_names, "pf_feature_vectors": unique,
                "pf_feature_rows": rows.ravel().astype(np.int64)}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], separator: str, control: str
                   ) -> PerturbationFeatures:
        vectors = state["pf_feature_vectors"]
        if "pf_feature_rows" in state:
            vectors = vectors[state["pf_feature_rows"]]
        return cls(list(state["pf_learned"].astype(str)), state["pf_feature_names"].astype(str),
                   vectors, separator, control)


def numeric_doses(values: np.ndarray, key: str) -> np.ndarray:
    """Doses as float64; values that do not parse as numbers are an error naming them."""
    num = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(np.float64)
    bad = sorted({str(v) for v, d in zip(values, num, strict=True)
                  if np.isnan(d) and not pd.isna(v)})
    if bad:
        raise InputError(f"obs[{key!r}] has non-numeric dose(s) {bad[:5]}; give doses as "
                         f"numbers (e.g. 0.1, not '0.1uM').")
    return num
