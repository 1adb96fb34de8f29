"""End-to-end fixtures: real ``pollen`` processes talking gRPC with mutual TLS on 127.0.0.1."""

import pytest

from pollen.config import make_config
from pollen.simulation import simulate

from e2e_helpers import PARTIES, RUN, Procs


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    yield p
    p.close()


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """Certificates and shards, made by the CLI, shared by the e2e tests (copied per test)."""
    root = tmp_path_factory.mktemp("e2e-base")
    p = Procs(root)
    p.run("certs", "--out", str(root / "certs"), "--parties", str(PARTIES))
    p.run("partition", "--out", str(root / "data"), "--dataset", "digits", "--parties", str(PARTIES), "--seed", "0")
    return root


@pytest.fixture(scope="session")
def simulated(tmp_path_factory):
    """The inline simulation's final model for the e2e run configuration."""
    cfg = make_config({**RUN, "run": {**RUN["run"], "runs_dir": str(tmp_path_factory.mktemp("sim")), "name": "sim"}})
    return simulate(cfg).state


