"""Nothing touches the network at run time: a benchmark with baselines and a set model, its
HTML report and a training run all complete with every internet socket blocked."""

from __future__ import annotations

import socket

import pytest

from perturbcast.cli import main

TINY = ["--param", "max_steps=12", "--param", "dim=16", "--param", "depth=1",
        "--param", "n_heads=2", "--param", "set_size=16", "--param", "n_latent=8"]
KEYS = ["--perturbation-key", "perturbation", "--control", "control", "--context-key",
        "context"]


class NetworkBlocked(RuntimeError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open an internet connection (or resolve a name) raises."""
    attempts: list[str] = []

    def refuse(what):
        def blocked(*args, **kwargs):
            attempts.append(f"{what}{args[1:] if what.startswith('socket.') else args}")
            raise NetworkBlocked(f"network access attempted: {what}")
        return blocked

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self, address, *a):
        if self.family == socket.AF_UNIX:  # local IPC is not network
            return real_connect(self, address, *a)
        return refuse("socket.connect")(self, address)

    def connect_ex(self, address, *a):
        if self.family == socket.AF_UNIX:
            return real_connect_ex(self, address, *a)
        return refuse("socket.connect_ex")(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    yield attempts
    assert not attempts, attempts


def _run(args):
    try:
        main(args)
    except SystemExit as e:
        assert not e.code, f"{args[0]} exited with {e.code}"


def test_the_block_works(no_network):
    with pytest.raises(NetworkBlocked):
        socket.create_connection(("pypi.org", 443), timeout=1)
    no_network.clear()


def test_benchmark_and_report_offline(no_network, sim_file, tmp_path):
    _run(["benchmark", "--data", str(sim_file), *KEYS, "--split", "combo", "--n-folds", "2",
          "--models", "additive,linear,transition", *TINY, "--param", "base=none",
          "--param", "shrink=1", "--out", str(tmp_path / "b")])  # train: the default fall-back
    assert (tmp_path / "b" / "report.html").stat().st_size > 10_000


def test_training_offline(no_network, sim_file, tmp_path):
    _run(["train", "--data", str(sim_file), *KEYS, "--model", "flow", *TINY,
          "--out", str(tmp_path / "flow")])
    _run(["predict", "--model", str(tmp_path / "flow"), "--data", str(sim_file), "--contexts",
          "ctx0", "--n-cells", "10", "--out", str(tmp_path / "pred.h5ad")])
    assert (tmp_path / "pred.h5ad").exists()
