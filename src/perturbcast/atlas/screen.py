"""In-silico screen: how far does each predicted population move toward a target?

Two kinds of target, both in the Experiment's log1p(total 1e4) normalisation:

- a gene **signature** (up and down gene lists). Score = change of the signature score from
  the context's controls to the predicted cells, where a population's signature score is the
  mean over its up genes minus the mean over its down genes of the mean expression z-scored
  per gene by the controls of that context (standard deviation floored at ``sd_floor`` so
  genes silent in controls cannot dominate). Controls score 0 by construction.
- a **population** of cells (an .h5ad, e.g. a disease state). Score =
  1 - E(pred, target) / E(ctrl, target), E the energy distance (Euclidean over all model
  genes, unbiased U-statistic) on at most ``max_cells`` cells of each side drawn with the
  seed. 1 = reaches the target,
  0 = no closer than the controls, < 0 = moves away. With a context column in the target
  (``context_key``), each context is scored against the target cells of that context.
"""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.experiment import Experiment
from ..data.preprocess import detect_scale, normalize_log1p
from ..errors import InputError, preview

UP = {"up", "+", "+1", "1", "pos", "positive"}
DOWN = {"down", "-", "-1", "neg", "negative"}


def _missing(names, genes, what: str) -> None:
    have = set(map(str, genes))
    missing = [g for g in names if g not in have]
    if missing:
        raise InputError(f"{len(missing)} {what} genes are not among the model's "
                         f"{len(have)} genes ({preview(missing, 5)}); remove them or use a "
                         "model trained on those genes.")


class SignatureScorer:
    """Signature score change from the context's controls (see module docstring)."""

    score_name = "signature_score_change"

    def __init__(self, up: list[str], down: list[str], sd_floor: float = 0.1) -> None:
        if not up and not down:
            raise InputError("the signature has no up and no down genes; give at least one.")
        self.up, self.down, self.sd_floor = list(up), list(down), sd_floor

    def prepare(self, exp: Experiment, gene_idx: np.ndarray, genes: np.ndarray,
                contexts: list[str], seed: int = 0) -> None:
        """Per-context control mean and sd of the model's genes (read in blocks)."""
        _missing(self.up + self.down, genes, "signature")
        pos = {str(g): i for i, g in enumerate(genes)}
        self.up_idx = np.asarray([pos[g] for g in self.up], int)
        self.down_idx = np.asarray([pos[g] for g in self.down], int)
        self.mu, self.sd = {}, {}
        for ctx in contexts:
            pool = np.flatnonzero(exp.is_control & (exp.contexts == ctx))
            s = np.zeros(len(gene_idx))
            s2 = np.zeros(len(gene_idx))
            for start in range(0, pool.size, 4096):
                x = exp.rows(pool[start:start + 4096])[:, gene_idx].astype(np.float64)
                s += x.sum(0)
                s2 += (x * x).sum(0)
            mu = s / pool.size
            self.mu[ctx] = mu
            self.sd[ctx] = np.maximum(np.sqrt(np.maximum(s2 / pool.size - mu * mu, 0)),
                                      self.sd_floor)

    def score(self, x_pred: np.ndarray, context: str) -> float:
        """x_pred : ndarray, shape (n_cells, n_genes), the model's genes in order."""
        z = (x_pred.mean(0, dtype=np.float64) - self.mu[context]) / self.sd[context]
        up = z[self.up_idx].mean() if self.up_idx.size else 0.0
        down = z[self.down_idx].mean() if self.down_idx.size else 0.0
        return float(up - down)


class PopulationScorer:
    """1 - E(pred, target) / E(ctrl, target) with the energy distance (see module docstring)."""

    score_name = "energy_toward_target"

    def __init__(self, cells: np.ndarray, genes: np.ndarray, max_cells: int = 500,
                 contexts: np.ndarray | None = None, context_key: str | None = None) -> None:
        self.cells, self.genes, self.max_cells = cells, np.asarray(genes).astype(str), max_cells
        self.contexts, self.context_key = contexts, context_key

    def _sample(self, x: np.ndarray, key: str) -> np.ndarray:
        if x.shape[0] <= self.max_cells:
            return x
        rng = np.random.default_rng([self.seed, zlib.crc32(key.encode())])
        return x[np.sort(rng.choice(x.shape[0], self.max_cells, replace=False))]

    def prepare(self, exp: Experiment, gene_idx: np.ndarray, genes: np.ndarray,
                contexts: list[str], seed: int = 0) -> None:
        """Target cells on the model's genes; E(ctrl, target) per context."""
        _missing([str(g) for g in genes], self.genes, "model")
        pos = {g: i for i, g in enumerate(self.genes)}
        self.seed = seed
        cells = self.cells[:, [pos[str(g)] for g in genes]]
        self.target, self.ctrl_energy = {}, {}
        for ctx in contexts:
            if self.contexts is None:
                self.target[ctx] = self._sample(cells, "target")
            else:
                if not (self.contexts == ctx).any():
                    raise InputError(f"the target has no cells of context {ctx!r} in column "
                                     f"{self.context_key!r}; its contexts: "
                                     f"{preview(sorted(set(self.contexts)))}.")
                self.target[ctx] = self._sample(cells[self.contexts == ctx], f"target|{ctx}")
            pool = np.flatnonzero(exp.is_control & (exp.contexts == ctx))
            if pool.size > self.max_cells:
                rng = np.random.default_rng([seed, zlib.crc32(f"ctrl|{ctx}".encode())])
                pool = np.sort(rng.choice(pool, self.max_cells, replace=False))
            e = energy_distance(exp.rows(pool)[:, gene_idx], self.target[ctx])
            if e <= 0:
                raise InputError(f"context {ctx!r}'s controls are already at the target "
                                 "(energy distance 0); a population score needs a target that "
                                 "differs from the controls.")
            self.ctrl_energy[ctx] = e

    def score(self, x_pred: np.ndarray, context: str) -> float:
        x = self._sample(np.asarray(x_pred), f"pred|{context}")
        return 1.0 - energy_distance(x, self.target[context]) / self.ctrl_energy[context]


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased (U-statistic) energy distance 2 E|x-y| - E|x-x'| - E|y-y'|, Euclidean.

    The within-set means leave out each cell's zero distance to itself, so the value does not
    depend on the set sizes (a V-statistic would favour small sets).

    Parameters
    ----------
    x : ndarray, shape (n, n_genes); y : ndarray, shape (m, n_genes); n, m >= 2
    """
    tx = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    ty = torch.as_tensor(np.asarray(y), dtype=torch.float64)

    def within(t: torch.Tensor) -> float:
        n = t.shape[0]
        return float(torch.cdist(t, t).sum()) / max(n * (n - 1), 1)

    return 2 * float(torch.cdist(tx, ty).mean()) - within(tx) - within(ty)


def read_signature(path: Path) -> SignatureScorer:
    """A signature from .json {"up": [...], "down": [...]} or .csv/.tsv (gene, direction)."""
    if path.suffix.lower() == ".json":
        obj = json.loads(path.read_text())
        if not isinstance(obj, dict) or not set(obj) <= {"up", "down"}:
            raise InputError(f"{path} must hold a JSON object with keys 'up' and/or 'down' "
                             "(lists of gene names).")
        return SignatureScorer([str(g) for g in obj.get("up", [])],
                               [str(g) for g in obj.get("down", [])])
    df = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str)
    if list(df.columns[:2].str.lower()) != ["gene", "direction"]:
        raise InputError(f"{path} needs the columns gene,direction (direction up or down); "
                         f"found: {preview(df.columns)}.")
    direction = df.iloc[:, 1].str.strip().str.lower()
    bad = sorted(set(direction) - UP - DOWN)
    if bad:
        raise InputError(f"{path}: direction values {preview(bad, 5)} are not up/down (or +1/-1).")
    genes = df.iloc[:, 0].str.strip()
    return SignatureScorer(list(genes[direction.isin(UP)]), list(genes[direction.isin(DOWN)]))


def read_population(path: Path, max_cells: int = 500, seed: int = 0,
                    context_key: str | None = None) -> PopulationScorer:
    """Target cells from an .h5ad's X: at most ``max_cells`` rows (per value of the obs column
    ``context_key`` when given; seeded), normalised like
    :func:`~perturbcast.data.read_experiment` (raw counts -> total 1e4 + log1p)."""
    import anndata as ad
    import scipy.sparse as sp

    from ..data import validate

    try:
        adata = ad.read_h5ad(path, backed="r")
    except Exception as exc:  # noqa: BLE001 - any reader failure is a user input problem
        raise InputError(f"could not read {path} as h5ad ({type(exc).__name__}).") from exc
    try:
        if adata.n_obs == 0:
            raise InputError(f"{path} has no cells; the target population needs cells.")
        rng = np.random.default_rng([seed, 1])
        labels, groups = None, [np.arange(adata.n_obs)]
        if context_key is not None:
            validate.check_obs_column(adata.obs, context_key, "--target-context-key")
            labels = adata.obs[context_key].astype(str).to_numpy()
            groups = [np.flatnonzero(labels == c) for c in sorted(set(labels))]
        rows = np.sort(np.concatenate([g if g.size <= max_cells else
                                       rng.choice(g, max_cells, replace=False)
                                       for g in groups]))
        x = adata.X[rows]
        x = x.toarray() if sp.issparse(x) else np.asarray(x)
        genes = np.asarray(adata.var_names.astype(str))
    finally:
        adata.file.close()
    contexts = labels[rows] if labels is not None else None
    x = np.asarray(normalize_log1p(x, detect_scale(x)), dtype=np.float32)
    return PopulationScorer(x, genes, max_cells=max_cells, contexts=contexts,
                            context_key=context_key)


def read_target(path: str | os.PathLike, max_cells: int = 500, seed: int = 0,
                context_key: str | None = None):
    """A scorer from a target file: .h5ad = population (optionally per context: obs column
    ``context_key``); .json/.csv/.tsv = signature."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}; check the path passed to --rank-by.")
    if path.suffix.lower() == ".h5ad":
        return read_population(path, max_cells=max_cells, seed=seed, context_key=context_key)
    if context_key is not None:
        raise InputError("--target-context-key applies to population targets (.h5ad) only.")
    if path.suffix.lower() in (".json", ".csv", ".tsv"):
        return read_signature(path)
    raise InputError(f"--rank-by {path}: use an .h5ad (population of cells) or a signature "
                     "(.json with up/down lists, or .csv/.tsv with columns gene,direction).")
