"""Fixtures for the gRPC transport tests: real TLS credentials, digits shards, and a coordinator
service on 127.0.0.1 (in this process, on a port the OS picks)."""

import pytest

from pollen.config import make_config
from pollen.data import load_dataset, partition, write_shards
from pollen.transport.rpc.hub import GrpcTransport
from pollen.transport.rpc.service import FederationService, start_server
from pollen.transport.rpc.tls import RevocationList, make_certs

from grpc_helpers import PARTIES, Coordinator


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"), PARTIES + ["3"])


@pytest.fixture(scope="session")
def foreign_certs(tmp_path_factory):
    """Credentials from another CA: a party the federation never enrolled."""
    return make_certs(tmp_path_factory.mktemp("foreign"), PARTIES)


@pytest.fixture(scope="session")
def run_cfg():
    return make_config({"data": {"dataset": "digits", "parties": 3, "holdout": 0.0}, "model": {"model": "mlp"},
                        "federation": {"rounds": 2}, "run": {"seed": 0}})


@pytest.fixture(scope="session")
def shards(tmp_path_factory, run_cfg):
    ds = load_dataset("digits")
    parts = partition(ds, "iid", 3, 0)
    return write_shards(ds, parts, tmp_path_factory.mktemp("data"), scheme="iid", seed=0)


@pytest.fixture
def coordinator(certs, run_cfg):
    made = []

    def start(heartbeat: float = 1.0, max_bytes: int = 10**9, revoked=None, clock=None,
              admit_rate: float | None = None) -> Coordinator:
        hub = GrpcTransport(heartbeat) if clock is None else GrpcTransport(heartbeat, clock=clock)
        service = FederationService(hub, run_cfg.to_dict(), max_bytes, False, RevocationList(revoked))
        server, port = start_server(service, "127.0.0.1", 0, certs, admit_rate=admit_rate)
        c = Coordinator(hub, service, server, f"localhost:{port}", certs)
        made.append(c)
        return c

    yield start
    for c in made:
        c.hub.close()
        c.server.stop(grace=0).wait()
