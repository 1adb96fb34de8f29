"""A party over gRPC: loads its shard, joins the coordinator, runs ``LocalParty.handle`` on each
task it is sent, and survives the coordinator going away (reconnect with exponential backoff and
full jitter: a random wait in ``[0, min(cap, base·2^attempt)]``).

The party builds the same model, trainer and update pipeline as simulation from the run config
the coordinator sends when it joins, so its updates are the simulation's updates.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch

from pollen.client.party import LocalParty
from pollen.errors import ModelError, PollenError, TransportError
from pollen.transport.rpc import pollen_pb2 as pb
from pollen.transport.rpc import pollen_pb2_grpc as pb_grpc
from pollen.transport.rpc.framing import PROTOCOL_VERSION, assemble, grpc_options, to_chunks
from pollen.transport.rpc.messages import reply_message, task_from_message
from pollen.transport.rpc.tls import party_name, read_file
from pollen.types import Reply

log = logging.getLogger("pollen.party")
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
             grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED}
POLL_SECONDS = 10.0


@dataclass(frozen=True)
class PartyOptions:
    """How a party reaches its coordinator.

    Attributes:
        party_id: this party's id (must match its certificate).
        server: ``HOST:PORT`` of the coordinator.
        data_path: the party's own data (``ctx.data_path`` of its app; for the built-in datasets a
            shard folder written by ``pollen partition --out data/`` → ``data/party<i>``).
        app: this party's app (a .py file or module); None: the one the coordinator names.
        device: where this party trains (None: the run's ``--device``).
        certs_dir: folder with ``ca.pem`` and ``party-<id>.pem``/``.key``.
        insecure: connect without TLS.
        server_name: the name the server certificate must carry (default: the host in ``server``).
        retry_seconds: give up after this long without reaching the coordinator.
        backoff_base: first reconnect wait (seconds, before jitter).
        backoff_cap: longest reconnect wait.
        threads: torch threads for local training (None: torch's default).
    """

    party_id: str
    server: str
    data_path: str | None
    certs_dir: str = "certs"
    insecure: bool = False
    server_name: str | None = None
    retry_seconds: float = 300.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    threads: int | None = None
    app: str | None = None
    device: str | None = None


class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff and Jitter").

    Jitter only spreads reconnects in time; it needs no secure randomness.
    """

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        self.base, self.cap, self.rng = base, cap, rng or random.Random()
        self.attempt = 0

    def next(self) -> float:
        """Seconds to wait before the next attempt."""
        wait = self.rng.uniform(0, min(self.cap, self.base * 2.0 ** min(self.attempt, 64)))  # no float overflow
        self.attempt += 1
        return wait

    def reset(self) -> None:
        """Back to the first attempt (after a success)."""
        self.attempt = 0


def build_party(opts: PartyOptions, welcome: dict[str, Any]) -> LocalParty:
    """This process's ``LocalParty``, assembled by ``pollen.compose`` from the coordinator's config and
    this party's own app and data, exactly as simulation assembles it.

    Args:
        opts: the party's options (its app, data path, device).
        welcome: what the coordinator sent on joining: ``{"config": …, "signature": [[name, shape, dtype], …]}``
            (a bare config is accepted too: then no model check).

    Raises:
        ConfigError, DataError, ModelError: the app cannot be loaded, the data cannot be read, or the
            app builds a model that differs from the coordinator's (the differences named).
    """
    from pollen.client.trainer import state_to_numpy
    from pollen.compose import assemble
    from pollen.config import make_config

    cfg = make_config(welcome["config"] if "config" in welcome else welcome)
    assembly = assemble(cfg, opts.app)  # None: the app the coordinator names (built-in datasets, or its path)
    assembly.use_device(opts.device)
    ctx = assembly.context(opts.party_id, "party", opts.data_path)
    trainer = assembly.trainer(ctx=ctx)
    expected = welcome.get("signature") if "config" in welcome else None
    if expected is not None:
        check_model(assembly.model_signature(state_to_numpy(trainer.model)), expected)
    party = assembly.party(opts.party_id, trainer, opts.data_path, lazy=False)
    return party


def check_model(mine: list[list[Any]], theirs: list[list[Any]]) -> None:
    """Refuse a party model whose tensors differ from the coordinator's, naming the differences.

    Raises:
        ModelError: names, shapes or dtypes differ.
    """
    a = {n: (tuple(s), d) for n, s, d in mine}
    b = {n: (tuple(s), d) for n, s, d in theirs}
    if a == b:
        return
    missing, extra = sorted(set(b) - set(a))[:4], sorted(set(a) - set(b))[:4]
    shapes = [f"{n}: {list(a[n][0])} here, {list(b[n][0])} at the coordinator" for n in sorted(set(a) & set(b))
              if a[n] != b[n]][:4]
    parts = ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else []) + shapes
    raise ModelError("this party's app builds a different model than the coordinator's (" + "; ".join(parts) +
                     "): run the same app on both sides, or check that this party's data has the same features")


def split_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` (``[v6]:PORT`` too).

    Raises:
        ConfigError: no port, or not a number in 1-65535.
    """
    from pollen.errors import ConfigError

    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or (":" in host and not host.startswith("[")):
        raise ConfigError(f"--server {address!r}: give the coordinator as HOST:PORT, e.g. localhost:9394 or "
                          "192.168.1.100:9394 (the port the server printed when it started)")
    return host, int(port)


def explain_unreachable(code: grpc.StatusCode, details: str, opts: PartyOptions) -> str:
    """A user's reading of a failed call: which of the usual causes it is, and the fix."""
    text = details.lower()
    tls_words = ("ssl", "tls", "handshake", "certificate", "wrong_version_number", "alert")
    if not opts.insecure and any(w in text for w in tls_words):
        if "wrong_version_number" in text or "record" in text or "http/1" in text or "unexpected eof" in text:
            return ("the TLS handshake failed: the coordinator seems to run without TLS (--insecure); start both "
                    f"sides the same way ({code.name}: {details})")
        return (f"the TLS handshake failed ({details}): check that --certs-dir holds the ca.pem and "
                f"party-{opts.party_id}.pem/.key made with the coordinator's CA, and --server-name if the host differs")
    if opts.insecure and ("socket closed" in text or "connection reset" in text or "eof" in text
                          or "end of tcp stream" in text or "frame" in text):
        return ("the coordinator closed the connection: it probably requires TLS, and this party runs with "
                f"--insecure; drop --insecure and pass --certs-dir ({code.name}: {details})")
    if "connection refused" in text or "failed to connect" in text:
        return f"nothing listens there yet (is the coordinator started, and is the port right?) ({code.name})"
    return f"{code.name}: {details}"


def make_channel(opts: PartyOptions) -> grpc.Channel:
    """A channel to the coordinator (mutual TLS unless insecure)."""
    if opts.insecure:
        return grpc.insecure_channel(opts.server, options=grpc_options())
    d = Path(opts.certs_dir)
    name = party_name(opts.party_id)
    creds = grpc.ssl_channel_credentials(read_file(d / "ca.pem", "CA certificate"),
                                         read_file(d / f"{name}.key", "party key"),
                                         read_file(d / f"{name}.pem", "party certificate"))
    options = grpc_options()
    if opts.server_name:
        options.append(("grpc.ssl_target_name_override", opts.server_name))
    return grpc.secure_channel(opts.server, creds, options=options)


class _Heartbeat(threading.Thread):
    def __init__(self, stub: pb_grpc.FederationStub, session: str, interval: float) -> None:
        super().__init__(name="pollen-heartbeat", daemon=True)
        self.stub, self.session, self.interval = stub, session, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        # Two beats per interval: the coordinator drops a party after 1.5 silent intervals, so a
        # party is only dropped after missing three beats in a row.
        while not self.stopped.wait(self.interval / 2):
            try:
                self.stub.Heartbeat(pb.HeartbeatRequest(session=self.session), timeout=self.interval)
            except grpc.RpcError as exc:
                log.debug("heartbeat failed: %s", exc.code())


class GrpcParty:
    """Runs one party against a coordinator until the run ends.

    Args:
        opts: connection options.
    """

    def __init__(self, opts: PartyOptions) -> None:
        split_address(opts.server)  # a host without a port is refused before anything starts
        self.opts = opts
        self.party: LocalParty | None = None
        self.broken: str | None = None  # why this party cannot train (told to the coordinator with each task)
        self.session = ""
        self.rounds_done = 0
        self._stopping = threading.Event()
        if opts.threads:
            torch.set_num_threads(opts.threads)
        # Import the training stack now, before joining: on a loaded machine these imports can
        # hold the interpreter long enough to miss heartbeats right after the party joined.
        import pollen.client.trainer  # noqa: F401
        import pollen.compose  # noqa: F401

    def run(self) -> int:
        """Serve tasks until the coordinator says stop; returns the number of tasks answered.

        Raises:
            TransportError: refused by the coordinator, or unreachable for ``retry_seconds``.
        """
        backoff = Backoff(self.opts.backoff_base, self.opts.backoff_cap)
        unreachable_since: float | None = None
        with make_channel(self.opts) as channel:
            stub = pb_grpc.FederationStub(channel)
            while not self._stopping.is_set():
                try:
                    if self._serve(stub, backoff):
                        return self.rounds_done
                    unreachable_since = None
                except grpc.RpcError as exc:
                    code = exc.code()
                    if code == grpc.StatusCode.UNAUTHENTICATED:
                        continue  # session expired (coordinator restarted, or we were dropped): join again
                    if code not in RETRYABLE:
                        raise TransportError(f"coordinator refused party {self.opts.party_id}: {exc.details()}") from None
                    now = time.monotonic()
                    unreachable_since = unreachable_since or now
                    why = explain_unreachable(code, exc.details() or "", self.opts)
                    if now - unreachable_since > self.opts.retry_seconds:
                        raise TransportError(f"coordinator {self.opts.server} unreachable for "
                                             f"{self.opts.retry_seconds:.0f} s: {why}") from None
                    wait = backoff.next()
                    left = self.opts.retry_seconds - (now - unreachable_since)
                    log.warning("cannot reach the coordinator at %s: %s; retry %d in %.1f s (giving up in %.0f s)",
                                self.opts.server, why, backoff.attempt, wait, left,
                                extra={"event": "reconnect", "reason": code.name, "seconds": round(wait, 3)})
                    self._stopping.wait(wait)
            return self.rounds_done

    def _serve(self, stub: pb_grpc.FederationStub, backoff: Backoff) -> bool:
        """Join and answer tasks; True when the coordinator ended the run."""
        joined = stub.Join(pb.JoinRequest(protocol_version=PROTOCOL_VERSION, party_id=self.opts.party_id,
                                          num_examples=0), timeout=30)
        backoff.reset()
        self.session = joined.session
        beat = _Heartbeat(stub, joined.session, joined.heartbeat_interval)
        beat.start()  # before building the model: that may take longer than a heartbeat interval
        try:
            if self.party is None and self.broken is None:
                try:
                    self.party = build_party(self.opts, json.loads(joined.run_config_json))
                except PollenError as exc:  # told to the coordinator with every task, so its operator sees it
                    self.broken = f"{type(exc).__name__}: {exc}"
                    log.error("party %s cannot train: %s", self.opts.party_id, self.broken,
                              extra={"event": "broken", "reason": self.broken})
            log.info("party %s joined", self.opts.party_id, extra={"event": "join", "party": self.opts.party_id})
            while not self._stopping.is_set():
                msg = assemble(stub.GetTask(pb.TaskRequest(session=self.session, wait_seconds=POLL_SECONDS)), 2**62)
                if msg is None:
                    continue
                if msg.header.get("type") == "stop":
                    return True
                task = task_from_message(msg.header, msg.payload)
                if self.party is None:
                    reply = Reply(task.party_id, task.kind, task.round, failure=f"party cannot train: {self.broken}")
                else:
                    reply = self.party.handle(task)
                header, payload = reply_message(reply)
                try:
                    ack = stub.SendReply(to_chunks(header, payload, session=self.session))
                except grpc.RpcError as exc:
                    if exc.code() not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
                        raise
                    # the coordinator refused this reply (e.g. a diverged, non-finite update): this
                    # round is lost for us, the next task may go better
                    log.warning("reply to round %s refused: %s", reply.round, exc.details(),
                                extra={"event": "refused", "round": reply.round, "reason": exc.details()})
                    continue
                if not ack.accepted:
                    log.info("reply to round %s not used: %s", reply.round, ack.reason)
                self.rounds_done += 1
            return True  # stopped by stop()
        finally:
            beat.stopped.set()

    def stop(self) -> None:
        """Make ``run`` return (after the task in hand, within one task poll): for embedding a party
        in a longer-lived program, which should also call ``leave``."""
        self._stopping.set()

    def leave(self) -> None:
        """Tell the coordinator this party leaves (best effort)."""
        if not self.session:
            return
        try:
            with make_channel(self.opts) as channel:
                pb_grpc.FederationStub(channel).Leave(pb.LeaveRequest(session=self.session), timeout=5)
        except grpc.RpcError:
            pass
