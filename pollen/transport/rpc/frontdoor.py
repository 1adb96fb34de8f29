"""The coordinator's front door: it owns the public TCP port, admits new connections at a bounded
rate, and relays each admitted connection byte for byte to the gRPC server on a private Unix socket.

Why: a client without a certificate of the federation's CA is refused in the TLS handshake, but
only after the coordinator has done its part of it (a key exchange and a signature: about 0.14 ms of
CPU per connection). gRPC's C core accepts connections as fast as they arrive, so a flood of them
costs the coordinator CPU in proportion to the flood, and a flooder on the same host spins freely.
The front door stops calling ``accept()`` while new connections arrive faster than ``rate`` per
second (a token bucket of ``burst``): the kernel's queue of the port fills, and the flood's connects
and first reads block, instead of burning the coordinator's CPU and its own. Connections already
admitted (the parties' channels, which live for the whole run) are not slowed; a new connection
waits its turn in the queue. TLS stays end to end: the front door never sees plaintext, and
identity is still the client certificate that gRPC checks.

Written with ``asyncio`` on one thread: gRPC's Python server cannot be handed an accepted socket,
and no maintained library shapes the accept rate inside a process. A connection that closes
before sending a byte (a flooder that gave up while queued) costs an ``accept`` and a ``close``;
a connection that sends nothing for ``first_byte_seconds`` is closed, and one whose client keeps it
open ``CLOSE_GRACE_SECONDS`` after gRPC closed it (a failed handshake) is closed too. Connections
open at once are bounded (``max_open``, from the process's file limit: three descriptors each, two
here and one in gRPC); past it the door stays shut until one closes, so slow clients cannot
exhaust descriptors.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import resource
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pollen.errors import TransportError

CHUNK = 256 * 1024  # bytes relayed per read
ADMIT_RATE = 20.0  # new connections per second, sustained: each refused one costs the coordinator ≈ 1.5 ms of CPU
# (the relay's Python ≈ 0.4–0.8 ms, gRPC's TLS handshake ≈ 0.14 ms: measured, benchmarks/RESULTS.md), so 3 % of a
# core at this rate; a party's channel lives for the whole run, and joins at once fit in ADMIT_BURST
ADMIT_BURST = 256  # new connections admitted at once (every party joining together)
BACKLOG = 128  # connections the kernel queues while the door waits
FIRST_BYTE_SECONDS = 10.0
CLOSE_GRACE_SECONDS = 5.0  # after gRPC closed a connection, how long the client has to close its side


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; :meth:`take` returns how long to wait for one
    (0: taken now)."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate {rate} and burst {burst} must be positive")
        self.rate, self.burst, self.clock = float(rate), float(burst), clock
        self.tokens, self.stamp = float(burst), clock()

    def take(self) -> float:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass
class DoorStats:
    """What the door did: connections admitted, those closed before their first byte, seconds the
    door stood shut (waiting for a token or a free place), connections open now, bytes relayed, and
    connections closed by the door because their client kept them open after gRPC closed them."""

    admitted: int = 0
    empty: int = 0
    shut_seconds: float = 0.0
    open: int = 0
    relayed_bytes: int = 0
    held: int = 0
    errors: dict[str, int] = field(default_factory=dict)


class FrontDoor:
    """Listen on ``host:port`` and relay admitted connections to the Unix socket ``backend``.

    Args:
        host, port: the public address (port 0: any free port; :meth:`start` returns it).
        backend: the path of the gRPC server's Unix socket.
        rate, burst: the admission token bucket (new connections per second, and at once).
        backlog: the kernel's queue of connections not yet accepted.
        first_byte_seconds: an admitted connection that sends nothing for this long is closed.
    """

    def __init__(self, host: str, port: int, backend: str, rate: float = ADMIT_RATE, burst: int = ADMIT_BURST,
                 backlog: int = BACKLOG, first_byte_seconds: float = FIRST_BYTE_SECONDS,
                 max_open: int | None = None) -> None:
        self.host, self.port, self.backend = host, port, backend
        self.bucket = TokenBucket(rate, burst)
        self.backlog, self.first_byte_seconds = backlog, first_byte_seconds
        self.max_open = max_open if max_open is not None else open_limit()
        self._slot: asyncio.Event | None = None  # set whenever fewer than max_open are open
        self.stats = DoorStats()
        self._names = itertools.count()
        self._peers: dict[str, str] = {}  # "unix-abstract:<name>" → the client's "ipv4:a.b.c.d:port"
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task] = set()
        self._acceptor: asyncio.Task
        self._changed = threading.Condition()  # notified whenever a connection is admitted or ends

    def start(self) -> int:
        """Bind the public port and start relaying; the port bound."""
        host = self.host.strip("[]")
        try:
            family = socket.getaddrinfo(host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
            # "::" takes IPv4 too where the system can, as gRPC's "[::]" does
            dual = family == socket.AF_INET6 and host == "::" and socket.has_dualstack_ipv6()
            sock = socket.create_server((host, self.port), family=family, backlog=self.backlog, dualstack_ipv6=dual)
        except OSError as exc:
            raise TransportError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}; "
                                 "choose another with --port") from None
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="pollen-front-door", daemon=True)
        self._thread.start()
        ready.wait()
        return sock.getsockname()[1]

    def wait_for(self, predicate: Callable[[DoorStats], bool], timeout: float | None = None) -> bool:
        """Block until ``predicate(stats)`` holds, re-checked each time a connection is admitted or
        ends; False after ``timeout`` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.stats), timeout)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def peer_of(self, peer: str) -> str:
        """The client's own address for gRPC's ``context.peer()`` of a relayed connection."""
        return self._peers.get(peer, peer)

    def stop(self, drain_seconds: float = 5.0) -> None:
        """Stop accepting and close the port; let each relayed connection finish for up to
        ``drain_seconds`` (what gRPC wrote before it closed still reaches the client: the
        "run finished" a party is told last), then close the rest."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        if loop.is_running():
            done = asyncio.run_coroutine_threadsafe(self._shutdown(drain_seconds), loop)
            try:
                done.result(timeout=drain_seconds + 10)
            except Exception:  # noqa: BLE001 — stopping anyway
                pass
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)

    # ------------------------------------------------------------ the loop
    def _run(self, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None and self._sock is not None
        asyncio.set_event_loop(loop)
        self._acceptor = loop.create_task(self._accept())
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            pending = [t for t in (self._acceptor, *self._tasks) if not t.done()]
            for t in pending:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()
            self._sock.close()

    async def _shutdown(self, drain_seconds: float) -> None:
        self._acceptor.cancel()
        await asyncio.gather(self._acceptor, return_exceptions=True)
        assert self._sock is not None
        self._sock.close()  # new connections are refused from here
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=drain_seconds)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._sock is not None
        self._slot = asyncio.Event()
        self._slot.set()
        while True:
            if self.stats.open >= self.max_open:  # shut until a connection closes
                self._slot.clear()
                started = time.monotonic()
                await self._slot.wait()
                self.stats.shut_seconds += time.monotonic() - started
            wait = self.bucket.take()
            if wait > 0:  # shut: the kernel queues what arrives meanwhile, and then refuses it
                started = time.monotonic()
                while wait > 0:
                    await asyncio.sleep(wait)
                    wait = self.bucket.take()
                self.stats.shut_seconds += time.monotonic() - started
            try:
                conn, addr = await loop.sock_accept(self._sock)
            except OSError as exc:  # e.g. EMFILE: wait a little rather than spin
                self._count(type(exc).__name__)
                await asyncio.sleep(0.1)
                continue
            self.stats.admitted += 1
            self.stats.open += 1  # here, not in the task: the next turn of this loop must see it
            self._notify()
            task = loop.create_task(self._relay(conn, addr))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _relay(self, conn: socket.socket, addr: tuple) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        up: socket.socket | None = None
        name = ""
        try:
            try:
                first = await asyncio.wait_for(loop.sock_recv(conn, CHUNK), self.first_byte_seconds)
            except (asyncio.TimeoutError, OSError):
                first = b""
            if not first:  # gave up while queued, or sent nothing: no gRPC connection for it
                self.stats.empty += 1
                return
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            up.setblocking(False)
            name = f"pollen-door-{os.getpid()}-{next(self._names)}"
            up.bind("\0" + name)  # gRPC names this peer "unix-abstract:<name>": peer_of maps it back
            self._peers["unix-abstract:" + name] = (f"ipv6:[{addr[0]}]:{addr[1]}" if conn.family == socket.AF_INET6
                                                    else f"ipv4:{addr[0]}:{addr[1]}")
            await loop.sock_connect(up, self.backend)
            await loop.sock_sendall(up, first)
            self.stats.relayed_bytes += len(first)
            down = loop.create_task(self._pipe(up, conn))
            upward = loop.create_task(self._pipe(conn, up))
            try:
                await down  # gRPC closed: nothing the client still sends would be read
                await asyncio.wait_for(upward, CLOSE_GRACE_SECONDS)  # a client holding it open is closed
            except asyncio.TimeoutError:
                self.stats.held += 1
            finally:
                for t in (down, upward):
                    t.cancel()
        except OSError as exc:
            self._count(type(exc).__name__)
        finally:
            self.stats.open -= 1
            if self._slot is not None:
                self._slot.set()
            self._peers.pop("unix-abstract:" + name, None)
            for s in (conn, up):
                if s is not None:
                    s.close()
            self._notify()

    async def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        """Copy ``src`` to ``dst`` until ``src`` ends; then end ``dst``'s writing side. A reset on
        either side ends both directions (closing the sockets wakes the other pipe)."""
        loop = asyncio.get_running_loop()
        try:
            while data := await loop.sock_recv(src, CHUNK):
                await loop.sock_sendall(dst, data)  # waits while dst's buffer is full: back-pressure
                self.stats.relayed_bytes += len(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _count(self, kind: str) -> None:
        self.stats.errors[kind] = self.stats.errors.get(kind, 0) + 1


def open_limit() -> int:
    """Connections the door may hold open: the file-descriptor limit (raised to the hard limit,
    at most 65,536), three descriptors per connection, 256 kept for the rest of the process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    soft = 65536 if soft == resource.RLIM_INFINITY else soft
    return max(16, (soft - 256) // 3)


class PrivateSocket:
    """A Unix socket path in a new folder only this user can enter (removed by :meth:`cleanup`)."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="pollen-grpc-")  # mode 0700
        self.path = os.path.join(self.folder, "grpc.sock")

    def cleanup(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
