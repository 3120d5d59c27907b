"""SIGTERM outside a training step (reading, choosing a base, writing) stops the command with
exit code 143, one line, and no partial files; during ``trainer.fit`` Lightning keeps handling
it (the step is reported: tests/test_resume.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from perturbcast.errors import Terminated
from perturbcast.sigterm import lightning_handles_sigterm, raise_on_sigterm
from perturbcast.utils import atomic_path

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
TINY = dict(max_steps=30, set_size=8, n_sets=2, dim=16, depth=1, n_heads=2, n_latent=8,
            base="none", shrink=1)


def _term() -> None:
    """Send SIGTERM to this process, but never with the default action (it would end the
    test run rather than fail a test)."""
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
    os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_raises_inside_the_block_and_removes_the_temporary_file(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated) as info, raise_on_sigterm():
        with atomic_path(tmp_path / "out.h5ad") as tmp:
            tmp.write_text("half a file")
            _term()
            pytest.fail("SIGTERM did not interrupt the block")
    assert info.value.code == 143 and info.value.step is None
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_repeated_sigterm_does_not_interrupt_the_cleanup(tmp_path):
    cleaned = []
    with pytest.raises(Terminated), raise_on_sigterm():
        try:
            _term()
        finally:  # a scheduler repeats the signal while the command cleans up
            with lightning_handles_sigterm():  # an inner block ends during the cleanup too
                pass
            os.kill(os.getpid(), signal.SIGTERM)
            cleaned.append(True)
    assert cleaned == [True]


def test_lightning_stands_aside_only_for_lightning():
    """Lightning calls the SIGTERM handler it finds installed: ours must not raise inside a
    training step, but must raise before Lightning installs its own and after it removes it."""
    with raise_on_sigterm():
        ours = signal.getsignal(signal.SIGTERM)
        with lightning_handles_sigterm():
            assert signal.getsignal(signal.SIGTERM) is not ours
            with pytest.raises(Terminated):  # Lightning's handler is not installed: raise
                _term()
    with raise_on_sigterm():
        ours = signal.getsignal(signal.SIGTERM)
        with lightning_handles_sigterm():
            handler = signal.getsignal(signal.SIGTERM)
            previous = signal.signal(signal.SIGTERM, lambda s, f: handler(s, f))  # Lightning's
            _term()  # stands aside (Lightning stops at the next batch boundary)
            signal.signal(signal.SIGTERM, previous)
        assert signal.getsignal(signal.SIGTERM) is ours


def test_a_callers_own_handler_and_other_threads_are_left_alone():
    def mine(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        with lightning_handles_sigterm():  # library use: not under raise_on_sigterm
            assert signal.getsignal(signal.SIGTERM) is mine
        seen = []

        def off_main() -> None:
            with raise_on_sigterm():
                seen.append(signal.getsignal(signal.SIGTERM))

        t = threading.Thread(target=off_main)
        t.start()
        t.join()
        assert seen == [mine]
    finally:
        signal.signal(signal.SIGTERM, before)


def test_sigterm_after_the_last_check_of_fit_still_stops(sim_exp, monkeypatch):
    """A signal Lightning absorbs after its last check (here: in on_train_end) returned from
    fit normally, and the command went on to write --out and exit 0."""
    from perturbcast.models import get_model
    from perturbcast.train.lightning import SetTrainingModule

    monkeypatch.setattr(SetTrainingModule, "on_train_end", lambda self: _term(), raising=False)
    with pytest.raises(Terminated) as info, raise_on_sigterm():
        get_model("transition", **TINY).fit(sim_exp, np.ones(sim_exp.n_cells, bool))
    assert info.value.step is not None and info.value.step > 0


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


def test_a_benchmark_folder_appears_complete_or_not_at_all(sim_exp, tmp_path, monkeypatch):
    from perturbcast.benchmark import run_benchmark
    from perturbcast.data import make_split
    from perturbcast.demo import finish_benchmark
    from perturbcast.eval import html_report

    sp = make_split(sim_exp, "unseen-perturbation", n_folds=2, seed=0)
    sp.folds = sp.folds[:1]
    res = run_benchmark(sim_exp, sp, ["cell_mean"], edistance=False, show_progress=False)

    def broken(*args, **kwargs):
        raise Terminated(None)  # e.g. SIGTERM while the last file was written

    monkeypatch.setattr(html_report, "write_html_report", broken)
    with pytest.raises(Terminated):
        finish_benchmark(res, tmp_path / "bench", "t", [], _Quiet(), sp)
    assert list(tmp_path.iterdir()) == []


class _Quiet:
    def print(self, *args, **kwargs) -> None:
        pass
