"""Shared helpers: atomic writes leave nothing on failure and give files the usual modes."""

import os
import stat

import pytest

from perturbcast.utils import atomic_path


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def test_atomic_file_and_dir_get_umask_modes(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with atomic_path(tmp_path / "d", is_dir=True) as tmp:
            (tmp / "a").write_text("y")
    finally:
        os.umask(umask)
    assert _mode(tmp_path / "f.txt") == 0o644
    assert _mode(tmp_path / "d") == 0o755


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "f.txt") as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
