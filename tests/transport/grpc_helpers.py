"""Helpers of the gRPC transport tests (a coordinator service handle, threads)."""

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from pollen.transport.rpc import pollen_pb2 as pb
from pollen.transport.rpc import pollen_pb2_grpc as pb_grpc
from pollen.transport.rpc.framing import PROTOCOL_VERSION, grpc_options
from pollen.transport.rpc.hub import GrpcTransport
from pollen.transport.rpc.service import FederationService

PARTIES = ["0", "1", "2"]


@dataclass
class Coordinator:
    hub: GrpcTransport
    service: FederationService
    server: grpc.Server
    address: str
    certs: object

    def channel(self, name: str, certs=None) -> grpc.Channel:
        d = certs or self.certs
        creds = grpc.ssl_channel_credentials((d / "ca.pem").read_bytes(), (d / f"{name}.key").read_bytes(),
                                             (d / f"{name}.pem").read_bytes())
        return grpc.secure_channel(self.address, creds, options=grpc_options())

    def join(self, party_id: str, cert: str | None = None):
        """A stub and session for a party (with its own certificate unless ``cert`` names another)."""
        ch = self.channel(cert or f"party-{party_id}")
        stub = pb_grpc.FederationStub(ch)
        r = stub.Join(pb.JoinRequest(protocol_version=PROTOCOL_VERSION, party_id=party_id), timeout=10)
        return ch, stub, r.session


def run_in_thread(fn) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


@contextmanager
def log_event(logger: str, event: str):
    """An Event set when ``logger`` (or a child) logs a record whose ``event`` field is ``event``:
    a test waits on what the code says it did, not on a sleep."""
    seen = threading.Event()

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "event", None) == event:
                seen.set()

    handler = _Handler(logging.DEBUG)
    log = logging.getLogger(logger)
    log.addHandler(handler)
    try:
        yield seen
    finally:
        log.removeHandler(handler)
