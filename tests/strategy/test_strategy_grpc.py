"""FedBuff and SCAFFOLD over the real gRPC transport (127.0.0.1, no TLS here; TLS is the
transport tests' business): the asynchronous loop and SCAFFOLD's extra tensors need nothing from
a transport beyond submit/poll and reply names that match the task."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pollen.config import make_config
from pollen.data import load_dataset, partition, write_shards
from pollen.server import Coordinator
from pollen.simulation.build import initial_state, make_strategy
from pollen.telemetry import RoundCompleted
from pollen.transport.rpc.hub import GrpcTransport
from pollen.transport.rpc.party import GrpcParty, PartyOptions
from pollen.transport.rpc.service import FederationService, start_server
from pollen.transport.rpc.tls import RevocationList

IDS = ["0", "1", "2"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    ds = load_dataset("digits")
    return ds, write_shards(ds, partition(ds, "iid", 3, 0), tmp_path_factory.mktemp("data"), scheme="iid", seed=0)


def _run(cfg, shards, rounds):
    ds, folder = shards
    hub = GrpcTransport(10.0)  # a loaded CI machine must not miss heartbeats
    server, port = start_server(FederationService(hub, cfg.to_dict(), 10**9, True, RevocationList(None)),
                                "127.0.0.1", 0, None)
    threads = []
    for pid in IDS:
        party = GrpcParty(PartyOptions(pid, f"127.0.0.1:{port}", str(folder / f"party{pid}"), insecure=True,
                                       backoff_base=0.05, backoff_cap=0.5, threads=1))
        t = threading.Thread(target=party.run, daemon=True)
        t.start()
        threads.append(t)
    try:
        assert hub.wait_for_parties(3, timeout=60)
        records = []
        coord = Coordinator(make_strategy(cfg), hub, rounds, round_timeout=60)
        coord.events.subscribe(lambda e: records.append(e.record) if isinstance(e, RoundCompleted) else None)
        state = coord.run(initial_state(cfg, ds))
    finally:
        hub.close()
        for t in threads:
            t.join(timeout=10)
        server.stop(0)
    return state, records


def _cfg(**strategy):
    return make_config({"data": {"dataset": "digits", "parties": 3, "holdout": 0.0}, "model": {"model": "mlp"},
                        "train": {"lr": 0.1}, "federation": {"rounds": 3}, "strategy": strategy, "run": {"seed": 0}})


def test_fedbuff_over_grpc(shards):
    state, recs = _run(_cfg(name="fedbuff", async_buffer=2), shards, 3)
    assert len(recs) == 3 and all(r["aggregated"] and len(r["parties"]) == 2 for r in recs)
    assert max(r["staleness_max"] for r in recs) >= 1  # the third party's update arrives a step late
    assert all(np.isfinite(v).all() for v in state.values())


def test_scaffold_over_grpc(shards):
    _, recs = _run(_cfg(name="scaffold"), shards, 2)
    assert all(r["aggregated"] and not r["parties_failed"] for r in recs), recs
