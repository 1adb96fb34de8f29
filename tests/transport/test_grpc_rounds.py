"""Rounds over real gRPC with mutual TLS on 127.0.0.1: parties are ``GrpcParty`` threads of this
process, the coordinator is the same ``Coordinator`` simulation runs."""


import numpy as np
import pytest

from pollen.config import make_config, merge
from pollen.server.coordinator import Coordinator
from pollen.simulation import simulate
from pollen.compose import assemble, build_strategy, base_round_config
from pollen.transport.rpc.party import Backoff, GrpcParty, PartyOptions
from pollen.transport.rpc.service import start_server
from pollen.transport.rpc.status import fetch_status
from pollen.types import RoundConfig, Task, state_nbytes

from grpc_helpers import PARTIES, run_in_thread


def _parties(c, shards, ids=PARTIES, **kw):
    out = []
    for pid in ids:
        party = GrpcParty(PartyOptions(pid, c.address, str(shards / f"party{pid}"), certs_dir=str(c.certs),
                                       backoff_base=0.05, backoff_cap=0.5, **kw))
        out.append((party, run_in_thread(party.run)))
    return out


@pytest.mark.parametrize("admit_rate", [None, 100.0], ids=["grpc-owns-the-port", "front-door"])
def test_grpc_rounds_equal_inline_simulation(coordinator, shards, run_cfg, tmp_path, admit_rate):
    c = coordinator(admit_rate=admit_rate)
    threads = _parties(c, shards)
    assert c.hub.wait_for_parties(3, timeout=60)
    state0 = assemble(run_cfg).initial_state()
    records = []
    coord = Coordinator(strategy=build_strategy(run_cfg), transport=c.hub, rounds=2, round_timeout=60)
    coord.events.subscribe(lambda e: records.append(e.record) if hasattr(e, "record") and "round" in e.record else None)
    final = coord.run(state0)
    c.hub.close()
    for _, t in threads:
        t.join(timeout=10)
        assert not t.is_alive(), "party did not stop when the run ended"
    cfg = make_config(merge(run_cfg.to_dict(), {"run": {"runs_dir": str(tmp_path), "name": "sim", "progress": False}}))
    sim = simulate(cfg).state
    assert list(final) == list(sim)
    for name in sim:
        np.testing.assert_allclose(final[name], sim[name], rtol=1e-5, atol=1e-6, err_msg=name)
    payload = state_nbytes(state0)
    for rec in records:
        assert rec["parties"] and not rec["parties_failed"]
        ratio = rec["bytes_down"] / (3 * payload)
        assert 1.0 < ratio < 1.05, ratio  # measured on the wire: model bytes + safetensors/protobuf framing
        assert 1.0 < rec["bytes_up"] / (3 * payload) < 1.05


@pytest.mark.parametrize("admit_rate", [None, 100.0], ids=["grpc-owns-the-port", "front-door"])
def test_status_lists_parties_and_progress(coordinator, shards, certs, admit_rate):
    c = coordinator(admit_rate=admit_rate)
    _parties(c, shards, ids=["0", "1"])
    assert c.hub.wait_for_parties(2, timeout=60)
    c.hub.stats.progress.update(round=3, rounds=5, phase="training", accuracy=0.5)
    s = fetch_status(c.address, certs)
    assert (s["round"], s["rounds"], s["phase"], s["last_accuracy"]) == (3, 5, "training", 0.5)
    assert sorted(p["party_id"] for p in s["parties"] if p["alive"]) == ["0", "1"]
    assert all(p["peer"].startswith("ipv4:127.0.0.1:") for p in s["parties"]), s["parties"]  # the door maps it back


class FakeClock:
    """The hub's liveness clock, moved by the test: silence is measured exactly, not by sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_dead_party_is_dropped_within_two_heartbeats(coordinator, run_cfg):
    from pollen.transport.rpc import pollen_pb2 as pb
    from pollen.transport.rpc.hub import DEAD_AFTER, WATCH_EVERY

    assert DEAD_AFTER + WATCH_EVERY < 2  # the watcher sweeps every WATCH_EVERY intervals: "within two"
    clock = FakeClock()
    c = coordinator(heartbeat=1.0, clock=clock)
    t0 = clock.now
    ch0, stub0, session0 = c.join("0")  # beats when the test says so
    ch1, stub1, session1 = c.join("1")  # joins, then goes silent (as if killed)
    state = assemble(run_cfg).initial_state()
    c.hub.submit(Task("1", "fit", 1, state, RoundConfig(round=1)))

    def at(intervals: float) -> list[str]:
        clock.now = t0 + intervals * c.hub.heartbeat_interval
        assert not stub0.Heartbeat(pb.HeartbeatRequest(session=session0), timeout=10).stop
        return c.hub.sweep()

    for k in (0.5, 1.0, DEAD_AFTER):  # silent for up to DEAD_AFTER intervals: kept, its task still open
        assert at(k) == [] and c.hub.available() == ["0", "1"] and c.hub.pending() == 1
    clock.now = t0 + (DEAD_AFTER + WATCH_EVERY) * c.hub.heartbeat_interval  # the watcher thread's own sweep
    reply = c.hub.poll(timeout=60)  # drops it: its open task comes back failed at once
    assert reply is not None and reply.party_id == "1" and "no heartbeat for 1.6 s" in reply.failure
    assert c.hub.available() == ["0"] and c.hub.stats.dropped == 1 and c.hub.pending() == 0
    for k in range(2, 12):  # ten intervals more: a party that beats stays
        assert at(k) == [] and c.hub.available() == ["0"]
    ch0.close()
    ch1.close()


def test_party_reconnects_after_coordinator_restart(coordinator, shards):
    c = coordinator()
    party, thread = _parties(c, shards, ids=["0"])[0]
    assert c.hub.wait_for_parties(1, timeout=60)
    port = c.address.rsplit(":", 1)[1]
    c.server.stop(grace=0).wait()
    c2 = coordinator()  # a new coordinator process would be the same: no sessions known
    c2.server.stop(grace=0).wait()
    c2.server, _ = start_server(c2.service, "127.0.0.1", int(port), c2.certs)
    assert c2.hub.wait_for_parties(1, timeout=30), "party did not reconnect"
    assert thread.is_alive()


def test_backoff_grows_exponentially_with_full_jitter():
    import random

    b = Backoff(0.5, 8.0, random.Random(0))
    waits = [b.next() for _ in range(8)]
    for k, w in enumerate(waits):
        assert 0 <= w <= min(8.0, 0.5 * 2**k)
    assert max(waits[4:]) > 0.5  # the cap grew past the base
    b.reset()
    assert b.next() <= 0.5


def test_backoff_keeps_working_after_thousands_of_attempts():
    # 2**1100 no longer converts to a float: a party retrying for minutes at a small cap used to crash here
    b = Backoff(0.05, 0.5)
    waits = [b.next() for _ in range(2000)]
    assert all(0 <= w <= 0.5 for w in waits)


def test_stop_ends_a_party_that_is_still_retrying(shards):
    import socket

    from grpc_helpers import log_event

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    party = GrpcParty(PartyOptions("1", f"127.0.0.1:{port}", str(shards / "party1"), insecure=True,
                                   backoff_base=0.05, backoff_cap=0.5, retry_seconds=600))
    with log_event("pollen.party", "reconnect") as retrying:
        t = run_in_thread(party.run)
        assert retrying.wait(timeout=60), "the party never logged a retry"
    assert t.is_alive()  # retrying
    party.stop()
    t.join(timeout=10)
    assert not t.is_alive()


def test_tasks_to_an_absent_party_fail_at_once(coordinator, run_cfg):
    c = coordinator()
    c.hub.submit(Task("7", "fit", 1, {"w": np.zeros(2, np.float32)}, RoundConfig(round=1)))
    reply = c.hub.poll(timeout=1)
    assert reply.failure == "party not connected" and c.hub.pending() == 0


@pytest.mark.slow
def test_300mb_model_streams_both_ways(coordinator):
    from pollen.transport.rpc import pollen_pb2 as pb
    from pollen.transport.rpc.framing import assemble, to_chunks
    from pollen.transport.rpc.messages import reply_message, task_from_message
    from pollen.types import Reply, Update

    c = coordinator(heartbeat=60.0, max_bytes=400 * 10**6)  # this raw party sends no heartbeats
    rng = np.random.default_rng(0)
    state = {"big": rng.standard_normal(75_000_000, dtype=np.float32), "bias": np.ones(10, np.float32)}  # 300 MB
    ch, stub, session = c.join("0")
    c.hub.submit(Task("0", "fit", 1, state, RoundConfig(round=1)))
    msg = assemble(stub.GetTask(pb.TaskRequest(session=session, wait_seconds=5)), 2**40)
    task = task_from_message(msg.header, msg.payload)
    assert task.state["big"].shape == (75_000_000,) and np.array_equal(task.state["big"][:1000], state["big"][:1000])
    del msg
    delta = {k: np.full_like(v, 0.5) for k, v in task.state.items()}
    header, payload = reply_message(Reply("0", "fit", 1, update=Update(delta, 10)))
    assert stub.SendReply(to_chunks(header, payload, session=session)).accepted
    reply = c.hub.poll(timeout=60)
    assert reply.ok and reply.update.delta["big"].shape == (75_000_000,) and float(reply.update.delta["big"][-1]) == 0.5
    assert reply.bytes_down > 300_000_000 and reply.bytes_up > 300_000_000
    ch.close()


def test_insecure_mode_warns_loudly_and_join_timeout_fails_clearly(tmp_path, capsys):
    import socket

    from pollen.errors import RunError
    from pollen.transport.rpc.serve import run_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = make_config({"data": {"dataset": "digits", "parties": 2}, "run": {"runs_dir": str(tmp_path), "progress": False},
                       "network": {"insecure": True, "host": "127.0.0.1", "port": port, "min_parties": 2, "join_timeout": 0.5}})
    with pytest.raises(RunError, match="min-parties=2"):
        run_server(cfg)
    assert "WARNING: --insecure" in capsys.readouterr().err


def test_insecure_party_joins_an_insecure_coordinator(run_cfg, shards):
    from pollen.transport.rpc.hub import GrpcTransport
    from pollen.transport.rpc.service import FederationService
    from pollen.transport.rpc.tls import RevocationList

    hub = GrpcTransport(1.0)
    server, port = start_server(FederationService(hub, run_cfg.to_dict(), 10**8, True, RevocationList(None)), "127.0.0.1", 0, None)
    try:
        party = GrpcParty(PartyOptions("1", f"127.0.0.1:{port}", str(shards / "party1"), insecure=True))
        run_in_thread(party.run)
        assert hub.wait_for_parties(1, timeout=30) and hub.connected() == ["1"]
    finally:
        hub.close()
        server.stop(0).wait()


def test_party_survives_a_refused_reply(coordinator, shards, run_cfg):
    from dataclasses import replace

    c = coordinator()
    party, thread = _parties(c, shards, ids=["0"])[0]
    assert c.hub.wait_for_parties(1, timeout=60)
    state = assemble(run_cfg).initial_state()
    c.hub.submit(Task("0", "fit", 1, state, RoundConfig(round=1)))  # the first task builds party.party
    assert c.hub.poll(timeout=60).ok
    real = party.party.handle

    def diverged_in_round_2(task):
        reply = real(task)
        if task.round == 2:
            nan = {k: np.full_like(v, np.nan) if v.dtype.kind == "f" else v for k, v in reply.update.delta.items()}
            reply = replace(reply, update=reply.update.with_(delta=nan))
        return reply

    party.party.handle = diverged_in_round_2
    c.hub.submit(Task("0", "fit", 2, state, RoundConfig(round=2)))
    bad = c.hub.poll(timeout=60)
    assert not bad.ok and "NaN" in bad.failure and c.hub.stats.rejected["invalid"] == 1
    c.hub.submit(Task("0", "fit", 3, state, RoundConfig(round=3)))
    assert c.hub.poll(timeout=60).ok and thread.is_alive()
