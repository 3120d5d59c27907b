"""Real benchmark tasks as presets: the keys, cell filter and split of a published dataset.

The files are not shipped (licences); pass their path, or put them in ``$PERTURBCAST_DATA``
(default lookup also tries ``../shared/data`` beside the working directory).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad

from ..data.experiment import Experiment
from ..data.experiment_reader import read_experiment
from ..data.splits import Fold, Split
from ..errors import InputError


@dataclass
class Task:
    name: str
    filename: str
    description: str
    load: Callable[[ad.AnnData], Experiment]
    split: Callable[[Experiment], Split]


def _conds(exp: Experiment) -> list[tuple[str, str]]:
    return [tuple(r) for r in exp.conditions()[["perturbation", "context"]].to_numpy()]


# -- norman19_combo ----------------------------------------------------------------------------
def _norman_load(adata: ad.AnnData) -> Experiment:
    adata = adata[adata.obs["dataset"].astype(str) == "norman19"].copy()
    return read_experiment(adata, "condition", "control")


def _norman_split(exp: Experiment) -> Split:
    conds = _conds(exp)
    doubles = sorted(p for p, _ in conds if len(exp.components(p)) > 1)
    test_p = set(doubles[1::2])
    test = [c for c in conds if c[0] in test_p]
    return Split("custom", 0, [Fold("combo", [c for c in conds if c[0] not in test_p], test)],
                 {"task": "norman19_combo"})


# -- mcfaline23_crossline ----------------------------------------------------------------------
def _mcfaline_load(adata: ad.AnnData) -> Experiment:
    adata = adata[adata.obs["dataset"].astype(str) == "mcfaline23"].copy()
    return read_experiment(adata, "condition", "control", context_key="cell_type")


def _mcfaline_split(exp: Experiment) -> Split:
    conds = _conds(exp)
    folds = []
    for k, line in enumerate(exp.context_names()):
        perts = sorted(p for p, c in conds if c == line)
        test_p = {p for i, p in enumerate(perts) if i % 3 == k % 3}
        test = [(p, c) for p, c in conds if c == line and p in test_p]
        folds.append(Fold(f"line={line}", [c for c in conds if c not in set(test)], test))
    return Split("custom", 0, folds, {"task": "mcfaline23_crossline"})


# -- papalexi21_unseen -------------------------------------------------------------------------
def _papalexi_load(adata: ad.AnnData) -> Experiment:
    return read_experiment(adata, "perturbation", "control", exclude=["unassigned"])


def _papalexi_split(exp: Experiment) -> Split:
    conds = _conds(exp)
    perts = exp.perturbation_names()
    folds = []
    for k in range(5):
        test_p = {p for i, p in enumerate(perts) if i % 5 == k}
        folds.append(Fold(f"fold{k}", [c for c in conds if c[0] not in test_p],
                          [c for c in conds if c[0] in test_p]))
    return Split("custom", 0, folds, {"task": "papalexi21_unseen"})


# -- kang18_celltype ---------------------------------------------------------------------------
def _kang_load(adata: ad.AnnData) -> Experiment:
    return read_experiment(adata, "condition", "control", context_key="cell_type")


def _kang_split(exp: Experiment) -> Split:
    conds = _conds(exp)
    folds = []
    for ct in exp.context_names():
        test = [(p, c) for p, c in conds if c == ct]
        folds.append(Fold(f"celltype={ct}", [c for c in conds if c[1] != ct], test))
    return Split("custom", 0, folds, {"task": "kang18_celltype"})


TASKS: dict[str, Task] = {
    t.name: t for t in (
        Task("norman19_combo", "perturbench_devel_norman19_mcfaline23.h5ad",
             "Norman 2019 K562 CRISPRa: predict held-out doubles from singles + other doubles",
             _norman_load, _norman_split),
        Task("mcfaline23_crossline", "perturbench_devel_norman19_mcfaline23.h5ad",
             "McFaline 2023 CRISPRi: predict a third of one cell line's perturbations",
             _mcfaline_load, _mcfaline_split),
        Task("papalexi21_unseen", "papalexi2021_thp1_lowmoi_sceptredata.h5ad",
             "Papalexi 2021 THP-1 CRISPR-KO: 5-fold unseen perturbations (raw counts)",
             _papalexi_load, _papalexi_split),
        Task("kang18_celltype", "kang2018_pbmc_ifnb_scgen_valid.h5ad",
             "Kang 2018 PBMC IFN-b: predict one cell type's stimulated cells",
             _kang_load, _kang_split),
    )
}


def data_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("PERTURBCAST_DATA"):
        dirs.append(Path(os.environ["PERTURBCAST_DATA"]))
    dirs += [Path.cwd() / ".." / "shared" / "data", Path(__file__).parents[3] / ".." / "shared"
             / "data"]
    return dirs


def find_task_file(task: Task) -> Path | None:
    for d in data_dirs():
        if (d / task.filename).exists():
            return (d / task.filename).resolve()
    return None


def task_path(task: Task, data: str | os.PathLike | None) -> Path | None:
    """``data`` as given when it exists; a bare file name (no folder) that does not exist here
    is looked for in :func:`data_dirs`; no ``data``: the task's own file there."""
    if data is None:
        return find_task_file(task)
    path = Path(data)
    if path.exists() or any(sep in str(data) for sep in ("/", os.sep)):
        return path
    found = [d / path for d in data_dirs() if (d / path).exists()]
    return found[0].resolve() if found else path


def load_task(name: str, data: str | os.PathLike | None = None) -> tuple[Experiment, Split]:
    """Load a task's experiment and split from ``data`` (or the default data folders)."""
    if name not in TASKS:
        raise InputError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}.")
    task = TASKS[name]
    path = task_path(task, data)
    if path is None:
        raise InputError(f"task {name!r} needs {task.filename}; pass --data PATH or set "
                         f"PERTURBCAST_DATA to its folder.")
    if not path.exists():
        raise InputError(f"file not found: {path} (a bare name is also looked for in "
                         f"$PERTURBCAST_DATA and ../shared/data); pass its path with --data, "
                         f"or leave --data out to find {task.filename} there.")
    exp = task.load(ad.read_h5ad(path))
    return exp, task.split(exp)
