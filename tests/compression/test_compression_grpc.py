"""Codecs over real gRPC (mutual TLS on 127.0.0.1): the party process keeps its error-feedback
residual between rounds, a compressed downlink and uplink pass the server's message checks, and
the bytes counted are the ones measured on the wire."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from pollen.config import make_config
from pollen.data import load_dataset, partition, write_shards
from pollen.server.coordinator import Coordinator
from pollen.compose import assemble, build_strategy, base_round_config
from pollen.telemetry.events import RoundCompleted

pytestmark = pytest.mark.slow

PARTIES = ["0", "1"]


def test_topk_with_error_feedback_and_downlink_over_grpc(tmp_path):
    from pollen.transport.rpc.hub import GrpcTransport
    from pollen.transport.rpc.party import GrpcParty, PartyOptions
    from pollen.transport.rpc.service import FederationService, start_server
    from pollen.transport.rpc.tls import RevocationList, make_certs

    cfg = make_config({"data": {"dataset": "digits", "parties": 2, "holdout": 0.0}, "model": {"model": "mlp"},
                       "federation": {"rounds": 3},
                       "compression": {"codec": "topk", "topk_fraction": 0.05, "error_feedback": True,
                                       "topk_values": "bf16", "downlink": "int8"},
                       "run": {"seed": 0}})
    certs = make_certs(tmp_path / "certs", PARTIES)
    ds = load_dataset("digits")
    shards = write_shards(ds, partition(ds, "iid", 2, 0), tmp_path / "data", scheme="iid", seed=0)
    hub = GrpcTransport(15.0)  # generous heartbeat: the test machine is shared
    server, port = start_server(FederationService(hub, cfg.to_dict(), 10**9, False, RevocationList(None)),
                                "127.0.0.1", 0, certs)
    parties = [GrpcParty(PartyOptions(pid, f"localhost:{port}", str(shards / f"party{pid}"), certs_dir=str(certs),
                                      backoff_base=0.05, backoff_cap=0.5, threads=1)) for pid in PARTIES]
    threads = [threading.Thread(target=p.run, daemon=True) for p in parties]
    for t in threads:
        t.start()
    try:
        assert hub.wait_for_parties(2, timeout=60)
        pipeline = assemble(cfg).pipeline
        records: list[dict] = []
        coord = Coordinator(strategy=build_strategy(cfg), transport=hub, rounds=3, pipeline=pipeline, round_timeout=120)
        coord.events.subscribe(lambda e: records.append(e.record) if isinstance(e, RoundCompleted) else None)
        state0 = assemble(cfg).initial_state()
        final = coord.run(state0)
    finally:
        hub.close()
        server.stop(grace=0).wait()
    assert len(records) == 3
    assert all(sorted(r["parties"]) == PARTIES and not r["parties_failed"] for r in records), records
    assert all(r["compression_up"] > 5 and r["compression_down"] > 3 for r in records)  # measured on the wire
    key = pipeline.steps[-1].state_key
    for p in parties:  # each party process kept its residual between rounds
        assert p.party is not None and key in p.party.state
        assert any(np.abs(v).max() > 0 for v in p.party.state[key].values())
    assert any(not np.array_equal(final[k], state0[k]) for k in state0)
