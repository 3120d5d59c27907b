"""Small shared helpers: seeding, atomic writes, progress bars."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (if imported) for deterministic runs."""
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - seeds third-party code using the global RNG
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only on success.

    Nothing is left at ``path`` if the body raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        _chmod_like_new(tmp, is_dir)
        yield tmp
        if is_dir and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        raise


def _chmod_like_new(path: Path, is_dir: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700 entries; give them the modes a plain open() would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if is_dir else 0o666) & ~umask)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (temp file + rename); see :func:`json_text`."""
    with atomic_path(path) as tmp:
        tmp.write_text(json_text(obj, indent=2) + "\n")


def json_text(obj: Any, indent: int | None = None) -> str:
    """Standard JSON: NaN and infinities become ``null`` (Python's ``NaN`` is not JSON, and
    jq or a browser refuse the file); numpy scalars and arrays become numbers and lists."""
    return json.dumps(_finite(obj), indent=indent, default=_json_default, allow_nan=False)


def _finite(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite(v) for v in o]
    if isinstance(o, np.ndarray):
        return _finite(o.tolist())
    if isinstance(o, float | np.floating):
        return float(o) if np.isfinite(o) else None
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def progress(disable: bool = False):
    """A rich progress bar that writes to stderr (quiet when ``disable``)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=disable,
        transient=False,
    )


def check_output(path: str | os.PathLike, overwrite: bool = False, is_dir: bool = False,
                 option: str | None = "--out") -> None:
    """Fail (InputError, before any work) when ``path`` cannot or may not be written.

    An existing file or non-empty folder is refused unless ``overwrite``; a folder where a
    file is wanted (or the reverse), a path below a file, or a folder that cannot be written
    is refused with the fix.
    """
    from .errors import InputError

    path = Path(path)
    if path.exists() and path.is_dir() != is_dir:
        want, have = ("a folder", "a file") if is_dir else ("a file name", "a folder")
        raise InputError(f"{path} is {have}; {option or 'this output'} needs {want} here.")
    if path.exists() and not overwrite and not (path.is_dir() and not any(path.iterdir())):
        other = f", or choose another {option}" if option else ""
        raise InputError(f"{path} already exists; pass --overwrite to replace it{other}.")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: {parent} is a file, not a folder; choose "
                         f"another {option or 'folder'}.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {path}: no permission to write in {parent}; choose "
                         f"another {option or 'folder'}.")
