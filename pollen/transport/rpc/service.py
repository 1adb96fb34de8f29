"""The coordinator's gRPC service: authenticates every call, checks every message, and hands what
passes to the ``GrpcTransport``. Anything refused is logged and counted, and the run goes on.

Identity: with TLS (the default) a caller is the common name of its client certificate, which the
CA signed (``party-<id>``); a party claiming another id is refused. With ``--insecure`` the
claimed id is believed (local experiments only).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc

from pollen.errors import ProtocolError, TransportError
from pollen.transport.rpc import pollen_pb2 as pb
from pollen.transport.rpc import pollen_pb2_grpc as pb_grpc
from pollen.transport.rpc.framing import PROTOCOL_VERSION, assemble, grpc_options
from pollen.transport.rpc.hub import GrpcTransport, Session
from pollen.transport.rpc.messages import check_reply
from pollen.types import Reply
from pollen.transport.rpc.tls import ADMIN_NAME, PARTY_PREFIX, RevocationList, read_file, serial_of

log = logging.getLogger("pollen.transport.grpc")
MAX_POLL_SECONDS = 30.0


class FederationService(pb_grpc.FederationServicer):
    """Implements ``pollen.v1.Federation`` on top of a ``GrpcTransport``.

    Args:
        hub: the transport the coordinator drives.
        run_config: the run's config, sent to each party when it joins.
        max_message_bytes: the largest reply accepted.
        insecure: believe claimed ids (no TLS).
        revoked: the revocation list.
    """

    def __init__(self, hub: GrpcTransport, run_config: dict, max_message_bytes: int, insecure: bool,
                 revoked: RevocationList) -> None:
        self.hub = hub
        self.run_config_json = json.dumps(run_config)
        self.max_message_bytes = max_message_bytes
        self.insecure = insecure
        self.revoked = revoked

    # ------------------------------------------------------------ identity
    def _identity(self, context: grpc.ServicerContext) -> tuple[str | None, str | None]:
        """(certificate common name, serial) of the caller; (None, None) without TLS."""
        if self.insecure:
            return None, None
        auth = context.auth_context()
        cn = (auth.get("x509_common_name") or [b""])[0].decode()
        pem = (auth.get("x509_pem_cert") or [b""])[0]
        return cn, (serial_of(pem) if pem else None)

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

    # ------------------------------------------------------------ RPCs
    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinReply:
        if request.protocol_version != PROTOCOL_VERSION:
            self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, "protocol",
                         f"protocol version mismatch: the coordinator speaks {PROTOCOL_VERSION}, this party "
                         f"{request.protocol_version}; install the same pollen version on both sides")
        pid = request.party_id
        if not pid or len(pid) > 128 or not pid.replace("-", "").replace("_", "").isalnum():
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "party_id", f"bad party id {pid[:40]!r}")
        cn, serial = self._identity(context)
        if cn is not None and cn != PARTY_PREFIX + pid:
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "identity",
                         f"certificate {cn!r} may not join as party {pid!r}")
        if self.revoked.is_revoked(pid, serial):
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "revoked", f"party {pid} is revoked")
        s = self.hub.join(pid, context.peer())
        return pb.JoinReply(session=s.token, run_config_json=self.run_config_json,
                            heartbeat_interval=self.hub.heartbeat_interval, protocol_version=PROTOCOL_VERSION)

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> pb.HeartbeatReply:
        self._session(request.session, context)
        return pb.HeartbeatReply(stop=self.hub.closing)

    def GetTask(self, request: pb.TaskRequest, context: grpc.ServicerContext) -> Iterator[pb.Chunk]:
        s = self._session(request.session, context)
        wait = min(max(request.wait_seconds, 0.0), MAX_POLL_SECONDS)
        task = self.hub.next_task(s, wait)
        if task == "stop":
            yield pb.Chunk(header_json=json.dumps({"type": "stop"}))
        elif task is not None:
            yield from self.hub.stream_task(s, task)

    def SendReply(self, request_iterator: Iterator[pb.Chunk], context: grpc.ServicerContext) -> pb.Ack:
        if self.hub._sink is not None:  # a streaming round: fit uploads are folded as they arrive
            return self._fold_reply(iter(request_iterator), context)
        try:
            msg = assemble(request_iterator, self.max_message_bytes)
        except ProtocolError as exc:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "malformed", str(exc))
        if msg is None:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "malformed", "empty reply stream")
        s = self._session(msg.session, context)
        h = msg.header
        claimed = h.get("party_id")
        if claimed != s.party_id:
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "identity",
                         f"party {s.party_id} sent a reply claiming to be party {claimed!r}")
        try:
            rnd, kind = int(h.get("round")), str(h.get("kind"))
        except (TypeError, ValueError):
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "malformed", f"bad round {h.get('round')!r}")
        task = self.hub.open_task(s, s.party_id, rnd, kind)
        if task == "late":
            return pb.Ack(accepted=False, reason="the round's deadline passed; reply dropped")
        if isinstance(task, str):
            self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, "stale", task)
        try:
            reply = check_reply(h, msg.payload, task)
        except ProtocolError as exc:
            self.hub.reject("invalid", f"party {s.party_id} round {rnd}: {exc}", s, (s.party_id, rnd, kind))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self.hub.deliver(s, reply, msg.wire_bytes)
        return pb.Ack(accepted=True)

    def _fold_reply(self, chunks: Iterator[pb.Chunk], context: grpc.ServicerContext) -> pb.Ack:
        """``SendReply`` while a round streams: the same checks, then the upload is folded chunk by
        chunk into the round's running sum (``fold.py``) instead of being assembled; a reply that is
        not a plain fit reply is assembled as usual."""
        from pollen.transport.rpc.fold import FoldingReader
        from pollen.transport.rpc.framing import MAX_HEADER_BYTES, _chain

        first = next(chunks, None)
        if first is None or len(first.header_json) > MAX_HEADER_BYTES:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "malformed", "empty reply stream or header too long")
        try:
            h = json.loads(first.header_json)
            rnd, kind = int(h.get("round")), str(h.get("kind"))
        except (ValueError, TypeError, AttributeError):
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "malformed", "bad reply header")
        s = self._session(first.session, context)
        if h.get("party_id") != s.party_id:
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "identity",
                         f"party {s.party_id} sent a reply claiming to be party {h.get('party_id')!r}")
        if int(first.total_size) > self.max_message_bytes:
            self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "malformed",
                         f"message declares {first.total_size} bytes, more than the limit of {self.max_message_bytes}")
        task = self.hub.open_task(s, s.party_id, rnd, kind)
        if task == "late":
            return pb.Ack(accepted=False, reason="the round's deadline passed; reply dropped")
        if isinstance(task, str):
            self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, "stale", task)
        sink = self.hub.sink_for(task)
        reader = None
        if sink is not None:
            try:
                reader = FoldingReader(h, task, sink, int(first.total_size))
            except ProtocolError:
                reader = None  # a failure or an encoded update: assembled and checked the usual way
        key = (s.party_id, rnd, kind)
        if reader is None:
            try:
                msg = assemble(_chain(first, chunks), self.max_message_bytes)
                reply = check_reply(msg.header, msg.payload, task)
            except ProtocolError as exc:
                self.hub.reject("invalid", f"party {s.party_id} round {rnd}: {exc}", s, key)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            self.hub.deliver(s, reply, msg.wire_bytes)
            return pb.Ack(accepted=True)
        wire = 0
        try:
            for chunk in _chain(first, chunks):
                wire += chunk.ByteSize()
                reader.feed(chunk.data)
            update = reader.finish()
        except Exception as exc:  # noqa: BLE001 - a bad stream, or the party's connection lost mid-stream
            if reader.folded:  # part of this update is in the sum: the round cannot be aggregated
                sink.spoil(f"party {s.party_id}'s upload broke after part of it was folded ({exc})")
            self.hub.reject("invalid", f"party {s.party_id} round {rnd}: {exc}", s, key)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        reply = Reply(task.party_id, task.kind, task.round, update=update.with_(codec={"folded": True}),
                      seconds=reader.seconds)
        self.hub.deliver(s, reply, wire)
        return pb.Ack(accepted=True)

    def Leave(self, request: pb.LeaveRequest, context: grpc.ServicerContext) -> pb.Ack:
        s = self._session(request.session, context)
        self.hub.leave(s)
        return pb.Ack(accepted=True)

    def Status(self, request: pb.StatusRequest, context: grpc.ServicerContext) -> pb.StatusReply:
        cn, _ = self._identity(context)
        if cn is not None and cn != ADMIN_NAME and not cn.startswith(PARTY_PREFIX):
            self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "identity", f"certificate {cn!r} may not read status")
        now, st = time.monotonic(), self.hub.stats
        p = st.progress
        parties = [pb.PartyStatus(party_id=s.party_id, alive=s.alive, seconds_since_heartbeat=now - s.last_seen,
                                  tasks_done=s.tasks_done, peer=s.peer) for s in self.hub.sessions()]
        return pb.StatusReply(round=p.get("round", 0), rounds=p.get("rounds", 0), phase=p.get("phase", "waiting"),
                              parties=parties, last_accuracy=p.get("accuracy") or 0.0,
                              rejected_messages=sum(st.rejected.values()), bytes_in=st.bytes_in,
                              bytes_out=st.bytes_out, protocol_version=PROTOCOL_VERSION)


def listen_address(host: str, port: int) -> str:
    """``HOST:PORT`` for gRPC, with an IPv6 address in brackets (``::`` → ``[::]:9394``)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def start_server(service: FederationService, host: str, port: int, certs_dir: str | Path | None,
                 workers: int = 64) -> tuple[grpc.Server, int]:
    """Start the gRPC server (mutual TLS unless ``certs_dir`` is None).

    Returns:
        ``(server, port)``: the running server and the port it bound (useful with port 0).

    Raises:
        TransportError: missing credentials, or the port cannot be bound.
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=grpc_options())
    pb_grpc.add_FederationServicer_to_server(service, server)
    address = listen_address(host, port)
    try:
        if certs_dir is None:
            bound = server.add_insecure_port(address)
        else:
            d = Path(certs_dir)
            creds = grpc.ssl_server_credentials(
                [(read_file(d / "server.key", "server key"), read_file(d / "server.pem", "server certificate"))],
                root_certificates=read_file(d / "ca.pem", "CA certificate"), require_client_auth=True)
            bound = server.add_secure_port(address, creds)
    except RuntimeError as exc:
        raise TransportError(f"cannot listen on {address}: {exc}") from None
    if not bound:
        raise TransportError(f"cannot listen on {address} (port in use?); choose another with --port")
    server.start()
    return server, bound
