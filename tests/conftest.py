"""Shared fixtures: small, fast federations on scikit-learn digits."""

from __future__ import annotations

import os
import signal

import pytest
import torch

# Tests are many small models: one thread avoids oversubscribing the shared CI machine.
torch.set_num_threads(1)
os.environ.setdefault("POLLEN_TEST", "1")

# Child processes get Ctrl-C (SIGINT) as usual: a script that starts the tests in its background
# starts them with SIGINT ignored, which children would inherit (the tests that send SIGINT would
# then do nothing). Set here, in the parent, so that children need no ``preexec_fn``: Python code
# run between fork and exec in a process with gRPC's threads can hang the child (gRPC's fork
# handlers run; seen as "epoll_wait error: Bad file descriptor" and a party that never started).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def digits_cfg(tmp_path):
    """A factory of small digits run configs writing into tmp_path."""
    from pollen.config import make_config, merge

    def make(**sections):
        base = {
            "data": {"dataset": "digits", "parties": 4},
            "federation": {"rounds": 3},
            "run": {"name": "t", "runs_dir": str(tmp_path / "runs"), "progress": False, "seed": 0},
        }
        return make_config(merge(base, sections))

    return make


@pytest.fixture
def run_over_grpc():
    """A function that runs the Coordinator over a real gRPC server on 127.0.0.1 (no TLS) with
    each party a thread of this process reading its shard from disk; returns the final state and
    the round records. ``wrap``: a function of the gRPC transport returning the transport the
    coordinator drives (e.g. one that reorders replies)."""
    import threading

    from pollen.server import Coordinator
    from pollen.compose import assemble
    from pollen.telemetry import RoundCompleted
    from pollen.transport.rpc.hub import GrpcTransport
    from pollen.transport.rpc.party import GrpcParty, PartyOptions
    from pollen.transport.rpc.service import FederationService, start_server
    from pollen.transport.rpc.tls import RevocationList

    def run(cfg, dataset, folder, ids, *, heartbeat=60.0, round_timeout=600.0, wrap=None):
        hub = GrpcTransport(heartbeat)  # generous: a loaded CI machine must not miss heartbeats
        server, port = start_server(FederationService(hub, cfg.to_dict(), 10**9, True, RevocationList(None)),
                                    "127.0.0.1", 0, None)
        threads, errors = [], []

        def serve(party):
            try:
                party.run()
            except Exception as exc:  # noqa: BLE001 - reported by the test, not by a later one
                errors.append(exc)

        for pid in ids:
            # retry_seconds bounds how long a party outlives its server: a party thread left over
            # from one test must never join the next test's server (ports are reused)
            party = GrpcParty(PartyOptions(pid, f"127.0.0.1:{port}", str(folder / f"party{pid}"), insecure=True,
                                           backoff_base=0.05, backoff_cap=0.5, threads=1, retry_seconds=5.0))
            threads.append(threading.Thread(target=serve, args=(party,), daemon=True))
            threads[-1].start()
        try:
            assert hub.wait_for_parties(len(ids), timeout=60)
            records = []
            asm = assemble(cfg)
            coord = Coordinator(asm.strategy, hub if wrap is None else wrap(hub), cfg.federation.rounds,
                                pipeline=asm.pipeline, round_timeout=round_timeout,
                                stream_aggregate=cfg.federation.stream_aggregate)
            coord.events.subscribe(lambda e: records.append(e.record) if isinstance(e, RoundCompleted) else None)
            state = coord.run(asm.initial_state())
        finally:
            hub.close()
            for t in threads:
                t.join(timeout=120)  # parties stop when told; the long limit is for a loaded machine
            server.stop(0)
        assert not any(t.is_alive() for t in threads), "a party thread did not stop after the run"
        assert not errors, errors
        return state, records

    return run


@pytest.fixture(autouse=True)
def _stop_grpc_parties(monkeypatch):
    """Stops, after each test, every gRPC party the test created: a party thread that outlives its
    test would keep retrying its server and could join a later test's server on a reused port
    (with its own data, under an id another test's party expects)."""
    try:
        from pollen.transport.rpc.party import GrpcParty
    except (ImportError, RuntimeError):  # no usable gRPC transport here (a bare GPU machine): no party either
        yield
        return

    made = []
    init = GrpcParty.__init__

    def tracking_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(GrpcParty, "__init__", tracking_init)
    yield
    for party in made:
        party.stop()
