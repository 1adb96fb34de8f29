"""SecAgg+ over the real gRPC transport (127.0.0.1, parties as threads of this process): the
protocol uses nothing but submit/poll, Task/Reply arrays and JSON metadata, so the stages, the
dropout recovery and the result are the same as in simulation."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pollen.config import make_config
from pollen.data import load_dataset, partition, write_shards
from pollen.server import Coordinator
from pollen.simulation.build import initial_state, make_pipeline, make_strategy
from pollen.simulation.run import simulate
from pollen.telemetry import RoundCompleted
from pollen.transport.rpc.hub import GrpcTransport
from pollen.transport.rpc.party import GrpcParty, PartyOptions
from pollen.transport.rpc.service import FederationService, start_server
from pollen.transport.rpc.tls import RevocationList

IDS = ["0", "1", "2", "3"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    ds = load_dataset("digits")
    return ds, write_shards(ds, partition(ds, "iid", len(IDS), 0), tmp_path_factory.mktemp("data"), scheme="iid", seed=0)


def _cfg(tmp_path, **privacy):
    return make_config({"data": {"dataset": "digits", "parties": len(IDS), "holdout": 0.0}, "model": {"model": "mlp"},
                        "train": {"lr": 0.1}, "federation": {"rounds": 2}, "privacy": privacy,
                        "run": {"seed": 0, "progress": False, "runs_dir": str(tmp_path), "name": "plain"}})


def _run_grpc(cfg, shards):
    ds, folder = shards
    hub = GrpcTransport(60.0)  # a loaded CI machine must not miss heartbeats
    server, port = start_server(FederationService(hub, cfg.to_dict(), 10**9, True, RevocationList(None)),
                                "127.0.0.1", 0, None)
    threads = []
    for pid in IDS:
        party = GrpcParty(PartyOptions(pid, f"127.0.0.1:{port}", str(folder / f"party{pid}"), insecure=True,
                                       backoff_base=0.05, backoff_cap=0.5, threads=1))
        threads.append(threading.Thread(target=party.run, daemon=True))
        threads[-1].start()
    try:
        assert hub.wait_for_parties(len(IDS), timeout=60)
        records = []
        coord = Coordinator(make_strategy(cfg), hub, cfg.federation.rounds, pipeline=make_pipeline(cfg), round_timeout=600)
        coord.events.subscribe(lambda e: records.append(e.record) if isinstance(e, RoundCompleted) else None)
        state = coord.run(initial_state(cfg, ds))
    finally:
        hub.close()
        for t in threads:
            t.join(timeout=10)
        server.stop(0)
    return state, records


def test_secagg_over_grpc_matches_plain_fedavg(shards, tmp_path):
    plain = simulate(_cfg(tmp_path))
    state, records = _run_grpc(_cfg(tmp_path, secagg=True), shards)
    assert [r["secagg_parties"] for r in records] == [4.0, 4.0]
    diff = max(float(np.max(np.abs(state[k] - plain.state[k]))) for k in plain.state)
    assert diff < 1e-4  # quantisation steps are ~1e-6; the rest is the same training
    assert records[-1]["bytes_up"] > 4 * sum(v.nbytes for v in state.values())  # masked vectors counted


def test_secagg_over_grpc_recovers_from_a_dropout_after_masking(shards, tmp_path):
    _, records = _run_grpc(_cfg(tmp_path, secagg=True, secagg_dropout=0.25), shards)
    assert all(r["secagg_dropped"] == 1 and r["secagg_parties"] == 3 and r["aggregated"] for r in records)
    assert records[-1]["train_loss"] < records[0]["train_loss"]
