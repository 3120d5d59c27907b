"""SIGTERM outside a training step (reading, choosing a base, writing) stops the command with
exit code 143, one line, and no partial files; during ``trainer.fit`` Lightning keeps handling
it (tests/test_resume.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from perturbcast.errors import Terminated
from perturbcast.sigterm import lightning_handles_sigterm, raise_on_sigterm
from perturbcast.utils import atomic_path

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}


def test_sigterm_raises_inside_the_block_and_removes_the_temporary_file(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as info, raise_on_sigterm():
        with atomic_path(tmp_path / "out.h5ad") as tmp:
            tmp.write_text("half a file")
            os.kill(os.getpid(), signal.SIGTERM)
            pytest.fail("SIGTERM did not interrupt the block")
    assert info.value.code == 143 and info.value.step is None
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before


def test_lightning_gets_the_default_action_to_compose_with():
    """Lightning calls a SIGTERM handler already installed: ours would raise mid-step."""
    with raise_on_sigterm():
        ours = signal.getsignal(signal.SIGTERM)
        with lightning_handles_sigterm():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) is ours


def test_cli_stopped_while_writing_exits_143_and_leaves_nothing(sim_adata, tmp_path):
    data = tmp_path / "sim.h5ad"
    a = sim_adata.copy()
    del a.uns["true_effects"]
    a.write_h5ad(data)
    out = tmp_path / "st"
    # the store's folder is half written when the signal arrives
    script = (
        "import os, signal, sys\n"
        "import perturbcast.data.convert as c\n"
        "write = c._write_obs\n"
        "def killed(*args):\n"
        "    write(*args)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "c._write_obs = killed\n"
        "from perturbcast.cli import main\n"
        "main(sys.argv[1:])\n")
    res = subprocess.run([sys.executable, "-c", script, "convert", str(data),
                          "--perturbation-key", "perturbation", "--control", "control",
                          "--out", str(out)], env=ENV, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 143, res.stderr
    said = " ".join(res.stderr.split())
    assert "received SIGTERM outside a training step" in said and "Traceback" not in said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim.h5ad"]  # no .st.* folder
