"""The coordinator's front door (``frontdoor.py``): bytes relay both ways unchanged; new connections
are admitted at a bounded rate, so a flood waits in the kernel's queue while the connections
already admitted keep working; the port's errors are one clear line."""

import os
import select
import socket
import threading

import pytest

from pollen.errors import TransportError
from pollen.transport.rpc.frontdoor import FrontDoor, PrivateSocket, TokenBucket
from pollen.transport.rpc.hub import GrpcTransport
from pollen.transport.rpc.service import FederationService, start_server
from pollen.transport.rpc.tls import RevocationList


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_admits_a_burst_then_the_rate():
    clock = FakeClock()
    b = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [b.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take() == pytest.approx(0.5)  # empty: the next token in 1/rate
    clock.now += 0.5
    assert b.take() == 0.0 and b.take() > 0
    clock.now += 1000.0  # a long quiet spell refills only up to the burst
    assert sum(b.take() == 0.0 for _ in range(10)) == 3
    with pytest.raises(ValueError):
        TokenBucket(rate=0.0, burst=1)


@pytest.fixture
def echo():
    """A Unix-socket echo server standing in for gRPC: it returns every byte and ends when its
    client ends writing."""
    private = PrivateSocket()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(private.path)
    srv.listen(64)

    def serve_one(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield private.path
    srv.close()
    private.cleanup()


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "connection ended early"
        out += chunk
    return bytes(out)


def test_bytes_relay_both_ways_unchanged_with_half_close(echo):
    door = FrontDoor("127.0.0.1", 0, echo)
    port = door.start()
    try:
        payload = os.urandom(3 * 2**20 + 17)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            sender = threading.Thread(target=lambda: (c.sendall(payload), c.shutdown(socket.SHUT_WR)))
            sender.start()
            back = bytearray()
            while data := c.recv(1 << 16):  # the echo ends only after our half-close crossed the door
                back += data
            sender.join()
        assert bytes(back) == payload
        assert door.stats.admitted == 1 and door.stats.relayed_bytes == 2 * len(payload)
    finally:
        door.stop()


def _queued(door: FrontDoor) -> socket.socket:
    """Wait until the kernel holds a connection the door has not accepted (its listening socket
    turns readable: an event, no polling), and take it out of the queue here."""
    readable, _, _ = select.select([door._sock], [], [], 60)
    assert readable, "no connection reached the kernel's queue"
    conn, _ = door._sock.accept()
    return conn


def test_a_flood_waits_in_the_kernel_queue_while_admitted_connections_keep_working(echo):
    door = FrontDoor("127.0.0.1", 0, echo, rate=1e-6, burst=2)  # two admitted, then the door stays shut
    port = door.start()
    flood: list[socket.socket] = []
    try:
        parties = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
        for p in parties:
            p.sendall(b"j")
            assert _recv_exactly(p, 1) == b"j"
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)  # the kernel completes the connect
            s.sendall(b"\x16\x03\x01")  # the start of a TLS ClientHello
            flood.append(s)
        for i in range(50):  # the parties' connections are not slowed by the queue
            parties[i % 2].sendall(b"%d" % (i % 10))
            assert _recv_exactly(parties[i % 2], 1) == b"%d" % (i % 10)
        assert door.stats.admitted == 2
        queued = [_queued(door) for _ in range(5)]  # all five wait in the kernel's queue, not in the door
        assert door.stats.admitted == 2 and all(q.recv(3) == b"\x16\x03\x01" for q in queued)
        for q in queued:
            q.close()
        for p in parties:
            p.close()
    finally:
        door.stop()  # also while it waits for a token
        for s in flood:
            s.close()
    with pytest.raises(OSError):  # the door closed its port
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_connections_open_at_once_are_bounded(echo):
    door = FrontDoor("127.0.0.1", 0, echo, max_open=2)  # tokens to spare: only the bound holds the third
    port = door.start()
    try:
        held = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(2)]
        for s in held:
            s.sendall(b"a")
            assert _recv_exactly(s, 1) == b"a"
        third = socket.create_connection(("127.0.0.1", port), timeout=30)
        third.sendall(b"b")
        readable, _, _ = select.select([door._sock], [], [], 60)  # the third waits in the kernel's queue
        assert readable and door.stats.admitted == 2
        held[0].close()  # one closes: the third gets its place
        assert _recv_exactly(third, 1) == b"b" and door.stats.admitted == 3
        for s in (held[1], third):
            s.close()
    finally:
        door.stop()


def test_a_connection_that_sends_nothing_costs_no_backend_connection(echo):
    door = FrontDoor("127.0.0.1", 0, echo, first_byte_seconds=0.05)
    port = door.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as c:
            assert c.recv(1) == b""  # closed by the door after first_byte_seconds
        closed = socket.create_connection(("127.0.0.1", port), timeout=30)
        closed.close()  # gave up before the door reached it
        assert door.wait_for(lambda st: st.empty == 2, timeout=60)
        assert door.stats.admitted == 2 and door.stats.relayed_bytes == 0
    finally:
        door.stop()


def test_a_client_that_keeps_a_closed_connection_open_is_closed(monkeypatch):
    """gRPC closes a connection (a refused handshake); the client never closes its side: the door
    lets it go after CLOSE_GRACE_SECONDS instead of holding it (and a place of max_open) for ever."""
    import pollen.transport.rpc.frontdoor as fd

    monkeypatch.setattr(fd, "CLOSE_GRACE_SECONDS", 0.05)
    private = PrivateSocket()
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(private.path)
    srv.listen(4)

    def refuse() -> None:  # reads the first bytes, then closes, as gRPC does after a failed handshake
        conn, _ = srv.accept()
        conn.recv(16)
        conn.close()

    threading.Thread(target=refuse, daemon=True).start()
    door = FrontDoor("127.0.0.1", 0, private.path)
    port = door.start()
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=30)
        c.sendall(b"\x16\x03\x01")
        assert c.recv(1) == b""  # gRPC's close reached us; we keep our side open and send nothing
        assert door.wait_for(lambda st: st.open == 0, timeout=60), "the door held the connection"
        assert door.stats.held == 1
        c.close()
    finally:
        door.stop()
        srv.close()
        private.cleanup()


def test_a_port_in_use_is_one_clear_error():
    busy = socket.create_server(("127.0.0.1", 0))
    port = busy.getsockname()[1]
    service = FederationService(GrpcTransport(1.0), {}, 10**6, True, RevocationList(None))
    try:
        with pytest.raises(TransportError, match=f"cannot listen on 127.0.0.1:{port}.*--port"):
            start_server(service, "127.0.0.1", port, None, admit_rate=10.0)
    finally:
        busy.close()
