"""The coordinator's gRPC service: authenticates every call, checks every message, and hands what
passes to the ``GrpcTransport``. Anything refused is logged and counted, and the run goes on.

Identity: with TLS (the default) a caller is the common name of its client certificate, which the
CA signed (``party-<id>``); a party claiming another id is refused. With ``--insecure`` the
claimed id is believed (local experiments only).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

from pollen.errors import ProtocolError, TransportError
from pollen.transport.rpc import pollen_pb2 as pb
from pollen.transport.rpc import pollen_pb2_grpc as pb_grpc
from pollen.transport.rpc.framing import (PROTOCOL_VERSION, RECEIVE_WINDOW, grpc_options, read_header, read_payload,
                                          window_options)
from pollen.transport.rpc.frontdoor import ADMIT_BURST, FrontDoor, PrivateSocket
from pollen.transport.rpc.guard import FIRST_CHUNK_SECONDS, MIN_RATE, Call, Guard, Refused
from pollen.transport.rpc.hub import GrpcTransport, Session
from pollen.transport.rpc.messages import check_reply
from pollen.types import Reply, Task
from pollen.transport.rpc.tls import ADMIN_NAME, PARTY_PREFIX, RevocationList, read_file, serial_of

log = logging.getLogger("pollen.transport.grpc")
MAX_POLL_SECONDS = 30.0
HANDSHAKE_MS = 20_000
UNARY_SECONDS = 30.0  # deadline of a call that is not a stream (join, heartbeat, status)
STATUS_CALLER = "\0status"  # --insecure: status calls share their own places, apart from anonymous uploads


class FederationService(pb_grpc.FederationServicer):
    """Implements ``pollen.v1.Federation`` on top of a ``GrpcTransport``.

    Every call is checked before anything is spent on it: with TLS, the caller's certificate must
    name a member of the federation (``party-<id>`` with an id in ``members``; ``admin`` for
    ``Status`` only) that is not revoked, and it gets a bounded share of concurrent calls with a
    deadline (``guard.py``); an upload's session and revocation are checked on its first chunk, its
    declared size is bounded by what its open task can produce, and its buffer grows as its bytes
    arrive.

    Args:
        hub: the transport the coordinator drives.
        run_config: the run's config, sent to each party when it joins.
        max_message_bytes: the largest reply accepted (whatever its task).
        insecure: believe claimed ids (no TLS).
        revoked: the revocation list.
        members: the party ids of the federation (None: any id a certificate of the CA names).
        guard: concurrency limits and deadlines (default: ``Guard()``).
    """

    def __init__(self, hub: GrpcTransport, run_config: dict, max_message_bytes: int, insecure: bool,
                 revoked: RevocationList, members: Iterable[str] | None = None, guard: Guard | None = None) -> None:
        self.hub = hub
        self.run_config_json = json.dumps(run_config)
        self.max_message_bytes = max_message_bytes
        self.insecure = insecure
        self.revoked = revoked
        self.members = None if members is None else frozenset(members)
        self.guard = guard or Guard()
        self.peer_of = lambda peer: peer  # behind a front door: the client's own address (start_server)

    # ------------------------------------------------------------ identity
    def _identity(self, context: grpc.ServicerContext) -> tuple[str | None, str | None]:
        """(certificate common name, serial) of the caller; (None, None) without TLS."""
        if self.insecure:
            return None, None
        auth = context.auth_context()
        cn = (auth.get("x509_common_name") or [b""])[0].decode()
        pem = (auth.get("x509_pem_cert") or [b""])[0]
        return cn, (serial_of(pem) if pem else None)

    def _caller(self, context: grpc.ServicerContext, admin: bool = False) -> str | None:
        """The caller's identity from its certificate, checked before a byte of its request is used:
        a member of the federation, not revoked (``admin`` too when ``admin``); None without TLS."""
        cn, serial = self._identity(context)
        if cn is None:
            return None
        if cn == ADMIN_NAME and admin:
            return cn
        if not cn.startswith(PARTY_PREFIX):
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "identity", f"certificate {cn!r} may not call this")
        pid = cn[len(PARTY_PREFIX):]
        self._member(pid, context)
        if self.revoked.is_revoked(pid, serial):
            self.hub.revoke(pid)  # out of the federation at once: its open task fails
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "revoked", f"party {pid} is revoked")
        return cn

    def _member(self, pid: str, context: grpc.ServicerContext) -> None:
        if self.members is not None and pid not in self.members:
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "membership",
                         f"party {pid[:40]!r} is not a member of this federation ({_describe(self.members)})")

    def _refuse(self, context: grpc.ServicerContext, code: grpc.StatusCode, reason: str, detail: str):
        self.hub.reject(reason, detail)
        context.abort(code, detail)

    def _session(self, token: str, context: grpc.ServicerContext) -> Session:
        s = self.hub.session(token)
        if s is None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown or expired session: join again")
        cn, serial = self._identity(context)
        if cn is not None and cn != PARTY_PREFIX + s.party_id:
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "identity",
                         f"session of party {s.party_id} used by certificate {cn!r}")
        if self.revoked.is_revoked(s.party_id, serial):
            self.hub.leave(s)
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "revoked", f"party {s.party_id} is revoked")
        return s

    @contextmanager
    def _slot(self, context: grpc.ServicerContext, caller: str | None, seconds: float) -> Iterator[Call]:
        """One of ``caller``'s concurrent calls, ending within ``seconds`` (refused when it holds all)."""
        try:
            call = self.guard.acquire(caller, context, seconds)
        except Refused as exc:
            self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", str(exc))
        try:
            yield call
        finally:
            self.guard.release(call)

    # ------------------------------------------------------------ RPCs
    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        caller = self._caller(context)
        with self._slot(context, caller, UNARY_SECONDS):  # --insecure: anonymous until it has a session
            if request.protocol_version != PROTOCOL_VERSION:
                self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, "protocol",
                             f"protocol version mismatch: the coordinator speaks {PROTOCOL_VERSION}, this party "
                             f"{request.protocol_version}; install the same pollen version on both sides")
            if self.hub.closing:  # a stopping coordinator takes no one in (parties retry, then wait for --resume)
                context.abort(grpc.StatusCode.UNAVAILABLE, "the coordinator is stopping")
            pid = request.party_id
            if not pid or len(pid) > 128 or not pid.replace("-", "").replace("_", "").isalnum():
                self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "party_id", f"bad party id {pid[:40]!r}")
            if caller is not None and caller != PARTY_PREFIX + pid:
                self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "identity",
                             f"certificate {caller!r} may not join as party {pid!r}")
            self._member(pid, context)
            if self.revoked.is_revoked(pid, self._identity(context)[1]):
                self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "revoked", f"party {pid} is revoked")
            s = self.hub.join(pid, self.peer_of(context.peer()))
            return pb.JoinReply(session=s.token, run_config_json=self.run_config_json,
                                heartbeat_interval=self.hub.heartbeat_interval, protocol_version=PROTOCOL_VERSION)

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatReply:
        caller = self._caller(context)
        s = self._session(request.session, context)
        with self._slot(context, caller or PARTY_PREFIX + s.party_id, UNARY_SECONDS):
            return pb.HeartbeatReply(stop=self.hub.closing)

    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        caller = self._caller(context)
        if not math.isfinite(request.wait_seconds):
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "malformed",
                         f"wait_seconds must be a finite number, got {request.wait_seconds}")
        s = self._session(request.session, context)
        wait = min(max(request.wait_seconds, 0.0), MAX_POLL_SECONDS)
        with self._slot(context, caller or PARTY_PREFIX + s.party_id, wait + UNARY_SECONDS) as call:
            task = self.hub.next_task(s, wait, context.is_active)
            if task == "stop":
                yield pb.Chunk(header_json=json.dumps(self.hub.stop_message()))
            elif task is not None:
                limit = time.monotonic() + self.hub.task_bytes(task) / MIN_RATE + self.guard.idle
                call.progress(limit)
                for chunk in self.hub.stream_task(s, task):
                    yield chunk
                    call.progress(limit)  # a party that stops reading is cut after IDLE_SECONDS

    def SendReply(self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext) -> pb.Ack:
        caller = self._caller(context)  # with TLS: member, not revoked — before a byte is read
        with self._slot(context, caller, FIRST_CHUNK_SECONDS) as call:
            chunks = iter(request_iterator)
            first = next(chunks, None)
            if first is None:
                why = f"no chunk within {FIRST_CHUNK_SECONDS:g} s" if call.expired else "empty reply stream"
                self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "malformed", why)
            s = self._session(first.session, context)  # session and revocation, on the first chunk
            if caller is None:  # --insecure: the session says who it is
                self._identify(call, PARTY_PREFIX + s.party_id, context)
            try:
                h = read_header(first)
            except ProtocolError as exc:
                self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "malformed", str(exc))
            claimed = h.get("party_id")
            if claimed != s.party_id:
                self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "identity",
                             f"party {s.party_id} sent a reply claiming to be party {claimed!r}")
            try:
                rnd, kind = int(h.get("round")), str(h.get("kind"))
            except (TypeError, ValueError, OverflowError):
                self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "malformed", f"bad round {str(h.get('round'))[:40]!r}")
            task = self.hub.open_task(s, s.party_id, rnd, kind)
            if task == "late":
                return pb.Ack(accepted=False, reason="the round's deadline passed; reply dropped")
            if isinstance(task, str):
                self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, "stale", task)
            key = (s.party_id, rnd, kind)
            limit = min(self.max_message_bytes, self.hub.reply_limit(task))
            stop_at = time.monotonic() + min(int(first.total_size), limit) / MIN_RATE + self.guard.idle
            call.progress(stop_at)
            sink = self.hub.sink_for(task)  # a streaming round: a plain fit upload is folded as it arrives
            if sink is not None:
                folded = self._fold_reply(first, h, chunks, task, sink, s, limit, call, stop_at, context)
                if folded is not None:
                    return folded
            try:
                msg = read_payload(first, h, chunks, limit, on_chunk=lambda n: call.progress(stop_at))
            except (ProtocolError, grpc.RpcError) as exc:  # RpcError: reading a call the watchdog cancelled
                detail = f"party {s.party_id} round {rnd}: " + (
                    f"the upload stalled (no chunk for {self.guard.idle:g} s, or slower than {MIN_RATE // 1024} KiB/s)"
                    if call.expired else (str(exc) or "the connection was lost during the upload"))
                self.hub.reject("oversized" if "limit" in str(exc) else "malformed", detail, s, key)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, detail)
            try:
                reply = check_reply(h, msg.payload, task)
            except ProtocolError as exc:
                self.hub.reject("invalid", f"party {s.party_id} round {rnd}: {exc}", s, key)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            self.hub.deliver(s, reply, msg.wire_bytes)
            return pb.Ack(accepted=True)

    def _fold_reply(self, first: pb.Chunk, h: dict, chunks: Iterator[pb.Chunk], task: Task, sink: Any, s: Session,
                    limit: int, call: Call, stop_at: float, context: grpc.ServicerContext) -> pb.Ack | None:
        """A fit upload of a streaming round, folded chunk by chunk into the round's running sum
        (``fold.py``) instead of being assembled; None for a reply that is not a plain fit reply (the
        caller assembles and checks it the usual way)."""
        from pollen.transport.rpc.fold import FoldingReader
        from pollen.transport.rpc.framing import _chain

        key = (s.party_id, task.round, task.kind)
        if int(first.total_size) > limit:
            detail = f"party {s.party_id} round {task.round}: message declares {first.total_size} bytes, more than the limit of {limit}"
            self.hub.reject("oversized", detail, s, key)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, detail)
        try:
            reader = FoldingReader(h, task, sink, int(first.total_size))
        except ProtocolError:
            return None
        wire = 0
        try:
            for chunk in _chain(first, chunks):
                wire += chunk.ByteSize()
                reader.feed(chunk.data)
                call.progress(stop_at)
            update = reader.finish()
        except Exception as exc:  # noqa: BLE001 - a bad stream, a stall cut by the guard, or a lost connection
            if reader.folded:  # part of this update is in the sum: the round cannot be aggregated
                sink.spoil(f"party {s.party_id}'s upload broke after part of it was folded ({exc})")
            self.hub.reject("invalid", f"party {s.party_id} round {task.round}: {exc}", s, key)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        reply = Reply(task.party_id, task.kind, task.round, update=update.with_(codec={"folded": True}),
                      seconds=reader.seconds)
        self.hub.deliver(s, reply, wire)
        return pb.Ack(accepted=True)

    def _identify(self, call: Call, caller: str, context: grpc.ServicerContext) -> None:
        """Move an anonymous call to ``caller``'s share (``--insecure``: known from its session)."""
        try:
            self.guard.identify(call, caller)
        except Refused as exc:
            self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "busy", str(exc))

    def Leave(self, request: pb.LeaveRequest, context: grpc.ServicerContext) -> pb.Ack:
        caller = self._caller(context)
        s = self._session(request.session, context)
        with self._slot(context, caller or PARTY_PREFIX + s.party_id, UNARY_SECONDS):
            self.hub.leave(s)
            return pb.Ack(accepted=True)

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        caller = self._caller(context, admin=True)
        with self._slot(context, caller or STATUS_CALLER, UNARY_SECONDS):  # --insecure: not the uploads' pool
            now, st = time.monotonic(), self.hub.stats
            p = st.progress
            own = None if caller is None or caller == ADMIN_NAME else caller[len(PARTY_PREFIX):]
            # a party learns about itself only: no other party's address, activity or the federation's traffic
            parties = [pb.PartyStatus(party_id=s.party_id, alive=s.alive, seconds_since_heartbeat=now - s.last_seen,
                                      tasks_done=s.tasks_done, peer=s.peer)
                       for s in self.hub.sessions() if own is None or s.party_id == own]
            counters = {} if own is not None else {"rejected_messages": sum(st.rejected.values()),
                                                  "bytes_in": st.bytes_in, "bytes_out": st.bytes_out}
            return pb.StatusReply(round=p.get("round", 0), rounds=p.get("rounds", 0), phase=p.get("phase", "waiting"),
                                  parties=parties, last_accuracy=p.get("accuracy") or 0.0,
                                  protocol_version=PROTOCOL_VERSION, **counters)


def _describe(members: frozenset[str]) -> str:
    """``ids 0-9 (--num-parties 10)`` or the ids listed."""
    ids = sorted(members, key=lambda p: (0, int(p)) if p.isdigit() else (1, p))
    if ids and all(p.isdigit() for p in ids) and ids == [str(i) for i in range(len(ids))]:
        return f"ids 0-{len(ids) - 1}, --num-parties {len(ids)}"
    return "ids " + ", ".join(ids[:10]) + (" …" if len(ids) > 10 else "")


def stream_window(stream_aggregate: str, model_bytes: int, parties: int) -> int | None:
    """The receive window a coordinator's server takes (``start_server``): bounded
    (``RECEIVE_WINDOW``) when the round's uploads stream into a running sum (``--stream-aggregate
    on``, or ``auto`` when ``parties`` updates of ``model_bytes`` exceed ``AUTO_BYTES``), so that
    the uploads in flight stay a small part of a big model; else None (gRPC's own sizing)."""
    from pollen.server.streaming import big_round

    if stream_aggregate == "on" or (stream_aggregate == "auto" and big_round(model_bytes, max(parties, 1))):
        return RECEIVE_WINDOW
    return None


def listen_address(host: str, port: int) -> str:
    """``HOST:PORT`` for gRPC, with an IPv6 address in brackets (``::`` → ``[::]:9394``)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def start_server(service: FederationService, host: str, port: int, certs_dir: str | Path | None,
                 workers: int = 64, receive_window: int | None = None,
                 admit_rate: float | None = None, admit_burst: int = ADMIT_BURST) -> tuple[grpc.Server, int]:
    """Start the gRPC server (mutual TLS unless ``certs_dir`` is None).

    Args:
        receive_window: bytes each upload may have in flight (``framing.RECEIVE_WINDOW``, for big
            models: ``stream_window``); None lets gRPC size windows by bandwidth-delay probing.
        admit_rate: new connections per second admitted by a front door (``frontdoor.py``) that
            owns ``host:port`` and relays to gRPC on a private Unix socket; None or 0: gRPC owns
            the port (no front door).
        admit_burst: new connections the front door admits at once.

    Returns:
        ``(server, port)``: the running server and the port it bound (useful with port 0).

    Raises:
        TransportError: missing credentials, or the port cannot be bound.
    """
    # as many calls at once as threads: a call past them is refused at once instead of queueing behind stalled ones
    # a client that opens a connection and stalls in the TLS handshake holds it 20 s, not gRPC's default 120 s
    options = grpc_options() + window_options(receive_window) + [("grpc.server_handshake_timeout_ms", HANDSHAKE_MS)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=options,
                         maximum_concurrent_rpcs=workers)
    pb_grpc.add_FederationServicer_to_server(service, server)
    address = listen_address(host, port)
    private = PrivateSocket() if admit_rate else None
    try:
        bound = _bind(server, address if private is None else "unix:" + private.path, certs_dir, address)
        if private is not None:
            door = FrontDoor(host, port, private.path, rate=float(admit_rate), burst=admit_burst)
            bound = door.start()
    except TransportError:
        if private is not None:
            private.cleanup()
        raise
    server.start()
    if private is None:
        return server, bound
    service.peer_of = door.peer_of
    return _BehindDoor(server, door, private), bound


def _bind(server: grpc.Server, bind: str, certs_dir: str | Path | None, address: str) -> int:
    """Add the port ``bind`` to ``server`` (TLS from ``certs_dir`` unless None); what gRPC bound.
    Errors name ``address``, the one the user gave."""
    try:
        if certs_dir is None:
            bound = server.add_insecure_port(bind)
        else:
            d = Path(certs_dir)
            creds = grpc.ssl_server_credentials(
                [(read_file(d / "server.key", "server key"), read_file(d / "server.pem", "server certificate"))],
                root_certificates=read_file(d / "ca.pem", "CA certificate"), require_client_auth=True)
            bound = server.add_secure_port(bind, creds)
    except RuntimeError as exc:
        raise TransportError(f"cannot listen on {address}: {exc}") from None
    if not bound:
        raise TransportError(f"cannot listen on {address} (port in use?); choose another with --port")
    return bound


class _Stopping:
    """What ``grpc.Server.stop`` returns (``wait``), then closes the front door."""

    def __init__(self, event: Any, after: Any) -> None:
        self.event, self.after = event, after

    def wait(self, timeout: float | None = None) -> bool:
        done = self.event.wait(timeout)
        self.after()
        return done


class _BehindDoor:
    """A gRPC server behind a front door: ``stop`` ends gRPC's calls (with its grace), then the
    door and its relayed connections; everything else is the gRPC server's."""

    def __init__(self, server: grpc.Server, door: FrontDoor, private: PrivateSocket) -> None:
        self._server, self.door, self._private = server, door, private
        self._closed = False

    def stop(self, grace: float | None) -> _Stopping:
        return _Stopping(self._server.stop(grace), self._close)

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.door.stop()
        self._private.cleanup()
        st = self.door.stats
        if st.shut_seconds >= 1.0:  # new connections came faster than --admit-rate at some point: say so
            log.warning("the front door admitted %d connections and stood shut for %.0f s of the run (new "
                        "connections arrived faster than --admit-rate; %d closed before sending anything)",
                        st.admitted, st.shut_seconds, st.empty, extra={"event": "front_door"})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)
