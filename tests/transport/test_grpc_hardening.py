"""Nothing is spent on a caller before it is authenticated, and no caller can hold what the others
need (issue 12, item 2). Before issue 12: ``SendReply`` allocated the declared size (up to 2 GB)
before checking the session or revocation (three 1.5 GB streams from a revoked certificate took the
coordinator from 366 MB to 4.7 GB); forty streams stalled after one chunk took every worker thread;
``wait_seconds = NaN`` busy-looped; a certificate of the right CA outside ``--num-parties`` joined;
``Status`` answered revoked certificates and showed every party's address.

Memory is read from this process (client and coordinator share it; the client reuses one chunk
object, so what grows is the coordinator's). Waits are on events; the timeouts are safety limits.
"""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

from pollen.transport.rpc import pollen_pb2 as pb
from pollen.transport.rpc import pollen_pb2_grpc as pb_grpc
from pollen.transport.rpc.framing import CHUNK_BYTES, PROTOCOL_VERSION, assemble, grpc_options, to_chunks
from pollen.transport.rpc.guard import Guard
from pollen.transport.rpc.hub import GrpcTransport
from pollen.transport.rpc.messages import reply_message
from pollen.transport.rpc.service import FederationService, start_server
from pollen.transport.rpc.tls import RevocationList
from pollen.types import Reply, RoundConfig, Task, Update

from grpc_helpers import Coordinator

STATE = {"w": np.ones((4, 3), np.float32), "b": np.zeros(3, np.float32)}
GB = 10**9


def rss() -> int:
    """Resident bytes of this process."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb * 1024


@pytest.fixture
def serve(certs, run_cfg, tmp_path):
    made = []

    def start(insecure=False, revoked=None, members=("0", "1", "2"), guard=None, max_bytes=2 * GB, heartbeat=60.0):
        hub = GrpcTransport(heartbeat)
        service = FederationService(hub, run_cfg.to_dict(), max_bytes, insecure, RevocationList(revoked),
                                    members=members, guard=guard or Guard(idle=1.0, tick=0.05))
        server, port = start_server(service, "127.0.0.1", 0, None if insecure else certs, workers=64)
        c = Coordinator(hub, service, server, f"localhost:{port}", certs)
        made.append(c)
        return c

    yield start
    for c in made:
        c.hub.close()
        c.server.stop(grace=0).wait()
        c.service.guard.close()


def _insecure_stub(c):
    ch = grpc.insecure_channel(c.address, options=grpc_options())
    return ch, pb_grpc.FederationStub(ch)


def _flood(first: pb.Chunk, chunks: int, stall: threading.Event | None = None):
    """A first chunk, then ``chunks`` more of 3 MiB (the same object: no client-side memory), or a stall."""
    data = b"\0" * CHUNK_BYTES

    def gen():
        yield first
        if stall is not None:
            stall.wait(60)
            return
        for _ in range(chunks):
            yield pb.Chunk(data=data)

    return gen()


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


# ---------------------------------------------------------------- nothing before authentication
def test_oversized_streams_of_a_revoked_party_are_refused_before_a_byte_is_kept(serve, tmp_path):
    revoked = tmp_path / "revoked.txt"
    revoked.write_text("")
    c = serve(revoked=revoked)
    ch, stub, session = c.join("2")
    revoked.write_text("2\n")
    before = rss()
    for _ in range(3):  # each declares 1.5 GB and pushes 300 MB
        first = pb.Chunk(session=session, header_json='{"party_id": "2", "round": 1, "kind": "fit"}',
                         total_size=int(1.5 * GB), data=b"\0" * CHUNK_BYTES)
        assert _code(lambda: stub.SendReply(_flood(first, 100), timeout=60)) == grpc.StatusCode.PERMISSION_DENIED
    assert rss() - before < 100 * 2**20, (rss() - before) / 2**20
    assert c.hub.stats.rejected["revoked"] >= 3
    ch.close()


def test_oversized_streams_without_a_session_are_refused_on_the_first_chunk(serve):
    c = serve(insecure=True)
    ch, stub = _insecure_stub(c)
    before = rss()
    for _ in range(3):
        first = pb.Chunk(session="forged", header_json='{"party_id": "0", "round": 1, "kind": "fit"}',
                         total_size=int(1.5 * GB), data=b"\0" * CHUNK_BYTES)
        assert _code(lambda: stub.SendReply(_flood(first, 100), timeout=60)) == grpc.StatusCode.UNAUTHENTICATED
    assert rss() - before < 100 * 2**20, (rss() - before) / 2**20
    ch.close()


def test_a_reply_may_declare_no_more_than_its_task_can_produce(serve):
    c = serve()
    ch, stub, session = c.join("0")
    c.hub.submit(Task("0", "fit", 1, STATE, RoundConfig(round=1)))
    assemble(stub.GetTask(pb.TaskRequest(session=session, wait_seconds=5)), 2**30)
    first = pb.Chunk(session=session, header_json='{"party_id": "0", "round": 1, "kind": "fit"}',
                     total_size=int(1.5 * GB), data=b"\0" * CHUNK_BYTES)
    before = rss()
    with pytest.raises(grpc.RpcError) as err:
        stub.SendReply(_flood(first, 100), timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit" in err.value.details()
    assert rss() - before < 100 * 2**20
    reply = c.hub.poll(timeout=10)  # the task is lost for the party that lied, the run goes on
    assert reply.party_id == "0" and not reply.ok and c.hub.stats.rejected["oversized"] == 1
    ch.close()


def test_a_declared_size_allocates_nothing_and_a_stalled_upload_is_cut(serve):
    c = serve(max_bytes=2 * GB)
    ch, stub, session = c.join("0")
    big = {"w": np.zeros(50_000_000, np.float32)}  # a 200 MB model: its reply may declare ~800 MB
    c.hub.submit(Task("0", "fit", 1, big, RoundConfig(round=1)))
    assemble(stub.GetTask(pb.TaskRequest(session=session, wait_seconds=5)), 2**40)
    stall = threading.Event()
    first = pb.Chunk(session=session, header_json='{"party_id": "0", "round": 1, "kind": "fit"}',
                     total_size=700_000_000, data=b"\0" * 1000)
    before = rss()
    with pytest.raises(grpc.RpcError) as err:
        stub.SendReply(_flood(first, 0, stall), timeout=60)  # stalls after one chunk; cut after idle=1 s
    stall.set()
    assert err.value.code() == grpc.StatusCode.CANCELLED, err.value.details()  # the coordinator cut it
    assert rss() - before < 50 * 2**20  # nothing like the 700 MB declared
    reply = c.hub.poll(timeout=10)
    assert reply.party_id == "0" and "stalled" in reply.failure
    ch.close()


# ---------------------------------------------------------------- threads
def test_forty_stalled_streams_cannot_take_the_threads_the_others_need(serve, certs):
    c = serve(insecure=True, guard=Guard(per_caller=4, anonymous=8, idle=60.0, tick=0.05))
    ch, stub = _insecure_stub(c)
    joined = stub.Join(pb.JoinRequest(protocol_version=PROTOCOL_VERSION, party_id="1"), timeout=10)
    stall = threading.Event()
    results: list[grpc.StatusCode] = []
    lock = threading.Lock()
    refused = threading.Event()  # set once the 32 calls past the 8 anonymous places are answered

    def stalled():  # anonymous: no chunk at all (it never says who it is)
        def gen():
            stall.wait(60)
            yield pb.Chunk()
        try:
            stub.SendReply(gen(), timeout=60)
        except grpc.RpcError as exc:
            with lock:
                results.append(exc.code())
                if len(results) >= 32:
                    refused.set()

    threads = [threading.Thread(target=stalled, daemon=True) for _ in range(40)]
    for t in threads:
        t.start()
    refused.wait(30)  # 40 − 8 anonymous places: refused at once
    assert results.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 32, results
    assert c.service.guard.active().get("\0anonymous") == 8
    # the 8 stalled calls hold 8 of 64 threads; everyone else is served at once
    assert stub.Heartbeat(pb.HeartbeatRequest(session=joined.session), timeout=5).stop is False
    assert stub.Status(pb.StatusRequest(), timeout=5).parties[0].party_id == "1"
    stall.set()
    for t in threads:
        t.join(timeout=30)
    # the server side ends a call just after its client hears the end: wait for the places to come back
    assert c.service.guard.wait_idle(30), f"the stalled calls kept their places: {c.service.guard.active()}"
    ch.close()


def test_a_party_holds_a_bounded_share_of_calls_and_stalls_are_cut(serve):
    guard = Guard(per_caller=3, anonymous=2, idle=0.5, tick=0.05)
    c = serve(guard=guard)
    ch, stub, session = c.join("0")
    c.hub.submit(Task("0", "fit", 1, STATE, RoundConfig(round=1)))
    assemble(stub.GetTask(pb.TaskRequest(session=session, wait_seconds=5)), 2**30)
    stall = threading.Event()
    codes: list[grpc.StatusCode] = []

    def upload():
        first = pb.Chunk(session=session, header_json='{"party_id": "0", "round": 1, "kind": "fit"}',
                         total_size=1000, data=b"\0" * 10)
        try:
            stub.SendReply(_flood(first, 0, stall), timeout=60)
        except grpc.RpcError as exc:
            codes.append(exc.code())

    threads = [threading.Thread(target=upload, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)  # each ends: refused at once (over the share) or cut by the idle deadline
    stall.set()
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 3 and len(codes) == 6, codes
    assert codes.count(grpc.StatusCode.CANCELLED) >= 1  # the stalled ones were cut
    assert guard.cancelled >= 1
    assert guard.wait_idle(30), f"the cut calls kept their places: {guard.active()}"
    ch.close()


def test_wait_seconds_nan_is_refused(serve):
    c = serve()
    ch, stub, session = c.join("0")
    for bad in (float("nan"), float("inf")):
        with pytest.raises(grpc.RpcError) as err:
            list(stub.GetTask(pb.TaskRequest(session=session, wait_seconds=bad), timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    ch.close()


# ---------------------------------------------------------------- membership and status
def test_a_certificate_outside_the_federation_is_refused(serve):
    c = serve(members=("0", "1", "2"))  # --num-parties 3; the CA also issued party-3
    ch = c.channel("party-3")
    stub = pb_grpc.FederationStub(ch)
    with pytest.raises(grpc.RpcError) as err:
        stub.Join(pb.JoinRequest(protocol_version=PROTOCOL_VERSION, party_id="3"), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "not a member" in err.value.details()
    assert _code(lambda: stub.Status(pb.StatusRequest(), timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
    assert c.hub.available() == [] and c.hub.stats.rejected["membership"] == 2
    ch.close()


def test_status_tells_a_party_only_about_itself(serve, tmp_path):
    revoked = tmp_path / "revoked.txt"
    revoked.write_text("")
    c = serve(revoked=revoked)
    chans = [c.join(p) for p in ("0", "1")]
    mine = chans[0][1].Status(pb.StatusRequest(), timeout=10)
    assert [p.party_id for p in mine.parties] == ["0"] and mine.bytes_in == 0 and mine.rejected_messages == 0
    admin = pb_grpc.FederationStub(c.channel("admin")).Status(pb.StatusRequest(), timeout=10)
    assert sorted(p.party_id for p in admin.parties) == ["0", "1"] and all(p.peer for p in admin.parties)
    revoked.write_text("1\n")
    assert _code(lambda: chans[1][1].Status(pb.StatusRequest(), timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
    for ch, _, _ in chans:
        ch.close()


def test_admin_certificate_may_only_read_status(serve):
    c = serve()
    stub = pb_grpc.FederationStub(c.channel("admin"))
    assert _code(lambda: stub.Join(pb.JoinRequest(protocol_version=PROTOCOL_VERSION, party_id="0"), timeout=10)) \
        == grpc.StatusCode.PERMISSION_DENIED


# ---------------------------------------------------------------- bytes
def test_bytes_down_counts_only_what_was_sent(serve):
    from pollen.server import Coordinator as RoundLoop
    from pollen.strategy import ClientConfig, Sampler, fedavg

    c = serve()
    ch0, stub0, s0 = c.join("0")
    ch1, _, _ = c.join("1")  # joined, never polls: its task is never sent
    done = threading.Event()

    def party0():
        while not done.is_set():
            msg = assemble(stub0.GetTask(pb.TaskRequest(session=s0, wait_seconds=1), timeout=10), 2**30)
            if msg is None or msg.header.get("type") == "stop":
                continue
            delta = {k: np.zeros_like(v) for k, v in STATE.items()}
            header, payload = reply_message(Reply("0", "fit", msg.header["round"], update=Update(delta, 5)))
            stub0.SendReply(to_chunks(header, payload, session=s0), timeout=10)

    t = threading.Thread(target=party0, daemon=True)
    t.start()
    records = []
    loop = RoundLoop(fedavg(Sampler(), ClientConfig()), c.hub, rounds=1, round_timeout=10.0)
    loop.events.subscribe(lambda e: records.append(e.record) if hasattr(e, "record") and "round" in e.record else None)
    loop.run(dict(STATE))
    done.set()
    t.join(timeout=15)
    rec = records[0]
    assert rec["parties"] == ["0"] and rec["parties_failed"] == ["1"], rec
    one_task = c.hub.stats.bytes_out
    assert rec["bytes_down"] == one_task > 0  # the silent party's task was never sent: not counted
    ch0.close(), ch1.close()


# ---------------------------------------------------------------- a flood of refused handshakes
def test_a_flood_of_refused_handshakes_reaches_the_log_as_one_line_with_a_count(serve, certs, caplog):
    import logging
    import socket
    import ssl

    from pollen.transport.rpc import grpclog
    from test_deploy_ux import fake_stderr

    c = serve()
    port = int(c.address.rsplit(":", 1)[1])
    logger = logging.getLogger("pollen.server")
    reporter = grpclog.HandshakeReporter(logger)
    capture = grpclog.StderrCapture(grpclog.server_handler(reporter, drop_info=False))
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.check_hostname = False
    caplog.set_level(logging.WARNING, "pollen.server")
    with fake_stderr() as real:
        assert capture.start()
        try:
            for i in range(200):  # no client certificate, or no TLS at all
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    try:
                        if i % 2:
                            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                            sock.recv(16)
                        else:
                            with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
                                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                                tls.recv(16)
                    except (OSError, ssl.SSLError):
                        pass
        finally:
            capture.stop()
            reporter.flush()
        real.seek(0)
        printed = real.read()
    lines = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "handshake_failed"]
    assert 1 <= len(lines) <= 3, lines  # one explanation (a second if the flood outlasted 10 s) + the count
    counted = sum(int(m.split(" more refused")[0].rsplit("[", 1)[-1]) for m in lines if " more refused" in m)
    assert counted + 1 >= 100, lines  # every refused handshake is counted, none printed on its own line
    assert b"Handshake failed" not in printed and len(printed) < 2000
