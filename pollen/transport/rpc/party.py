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
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from pollen.errors import ConfigError, ModelError, PollenError, TransportError
from pollen.transport.rpc import pollen_pb2 as pb
from pollen.transport.rpc import pollen_pb2_grpc as pb_grpc
from pollen.transport.rpc.framing import PROTOCOL_VERSION, assemble, grpc_options, to_chunks
from pollen.transport.rpc.messages import reply_message, task_from_message
from pollen.transport.rpc.tls import party_name, read_file
from pollen.types import Reply

if TYPE_CHECKING:
    from pollen.client.party import LocalParty

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
        ledger: this party's privacy ledger folder (None: next to its data, see
            ``pollen.client.ledger.default_dir``); used when the run spends privacy on the party.
        max_epsilon: this party's own privacy budget ε (None: the run's ``--target-epsilon`` when
            the ledger is created); the coordinator can never raise it.
        delta: δ of this party's own budget (None: the run's ``--delta`` when the ledger is created).
        secagg_trust_coordinator: accept a secure-aggregation threshold of at most half a
            neighbourhood if the coordinator asks for one (its config alone cannot waive the check).
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
    ledger: str | None = None
    max_epsilon: float | None = None
    delta: float | None = None
    secagg_trust_coordinator: bool = False


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
            app builds a model that differs from the coordinator's (the differences named). The data
            is read before the models are compared: a shard of another dataset is named as such.
    """
    from pollen.app import AppError
    from pollen.client.trainer import state_to_numpy
    from pollen.compose import assemble
    from pollen.config import make_config

    given = welcome["config"] if "config" in welcome else welcome
    if not opts.secagg_trust_coordinator and (given.get("privacy") or {}).get("secagg_trust_coordinator"):
        # the coordinator cannot waive this party's safety check: only its own operator can
        given = {**given, "privacy": {**given["privacy"], "secagg_trust_coordinator": False}}
    if opts.app and not (given.get("app") or {}).get("path"):
        raise ConfigError(f"this party runs --app {opts.app}, but the coordinator trains {describe_app(None, given)}: "
                          f"run the same app on both sides (drop --app here, or start the coordinator with --app)")
    cfg = make_config(given)
    # None: the app the coordinator names (built-in datasets, or its path); the coordinator's config is the run's
    try:
        assembly = assemble(cfg, opts.app, app_defaults=False)
    except AppError as exc:
        if opts.app or not cfg.app.path:
            raise
        raise AppError(f"the coordinator runs the app {cfg.app.path}, which this machine cannot load ({exc}); give "
                       "this party its own copy with --app PATH") from exc
    assembly.use_device(opts.device)
    ctx = assembly.context(opts.party_id, "party", opts.data_path)
    trainer = assembly.trainer(ctx=ctx)
    from pollen.client.ledger import default_dir

    where = opts.ledger or default_dir(opts.data_path, opts.party_id)
    ledger = assembly.ledger(opts.party_id, where, opts.max_epsilon, opts.delta)  # None without party-side DP
    party = assembly.party(opts.party_id, trainer, opts.data_path, lazy=False, ledger=ledger)
    if cfg.privacy.secagg:
        from pollen.privacy.secagg.party import identity_for

        identity_for(party, None if opts.insecure else opts.certs_dir, where)
    expected = welcome.get("signature") if "config" in welcome else None
    if expected is not None:
        check_model(assembly.model_signature(state_to_numpy(trainer.model)), expected)
    return party


def describe_app(opts: PartyOptions | None, welcome: dict[str, Any]) -> str:
    """The app this party trains with, in words (its own ``--app``, or the one the coordinator names)."""
    if opts is not None and opts.app:
        return f"app {opts.app}"
    cfg = welcome.get("config", welcome)
    path = (cfg.get("app") or {}).get("path")
    if path:
        return f"the coordinator's app {path}"
    from pollen.models.builtin import DEFAULT_DATASET

    return f"the built-in app on dataset {(cfg.get('data') or {}).get('dataset') or DEFAULT_DATASET}"


def one_line(text: str, limit: int = 600) -> str:
    """``text`` on one line, at most ``limit`` characters: a failure as the coordinator's log shows it."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


def describe_data(opts: PartyOptions) -> str:
    """This party's data, in words."""
    if opts.data_path is None:
        return "no --data (the app's load_data decides what this party reads)"
    found = "" if Path(opts.data_path).expanduser().exists() else " (no such file or folder on this machine)"
    return f"{opts.data_path}{found}"


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
    shapes = [f"{n} {list(a[n][0])} here, {list(b[n][0])} there" for n in sorted(set(a) & set(b))
              if a[n] != b[n]][:4]
    parts = shapes + ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else [])
    # The fix first: the coordinator's history keeps only the first few hundred characters.
    raise ModelError("this party's app builds a different model than the coordinator's: run the same app on both "
                     "sides and check that this party's data has the coordinator's features (" + "; ".join(parts) + ")")


def split_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT`` (``[v6]:PORT`` too).

    Raises:
        ConfigError: a URL, no port, or not a number in 1-65535.
    """
    if "://" in address:
        raise ConfigError(f"--server {address!r}: give the coordinator as HOST:PORT without a scheme, e.g. "
                          f"{address.split('://', 1)[1].rstrip('/') or 'localhost:9394'}")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or (":" in host and not host.startswith("[")):
        raise ConfigError(f"--server {address!r}: give the coordinator as HOST:PORT, e.g. localhost:9394 or "
                          "192.168.1.100:9394 (the port the server printed when it started)")
    return host, int(port)


def explain_unreachable(code: grpc.StatusCode, details: str, opts: PartyOptions, joined: bool = False) -> str:
    """A user's reading of a failed call: which of the usual causes it is, and the fix.

    What gRPC 1.85.1 reports (``exc.details()``; the code is UNAVAILABLE in each case):

    - nothing listens: ``… last error: UNKNOWN: ipv4:127.0.0.1:PORT: Failed to connect to remote
      host: Connection refused``; an unknown host: ``errors resolving HOST:PORT: …``;
    - this party with TLS, the coordinator ``--insecure``: ``… Tls handshake failed
      (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:100000f7:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER: …``;
    - this party ``--insecure``, the coordinator with TLS: ``… ipv4:127.0.0.1:PORT: Socket closed``
      — and the same when the coordinator refuses this party's certificate (another CA made it);
    - the coordinator's certificate from another CA: ``… OPENSSL_internal:BAD_SIGNATURE: certificate
      signature failure``; made for another name: ``… Hostname Verification Check failed.``

    Args:
        code, details: the failed call's status.
        opts: this party's options (TLS or not).
        joined: this party had joined before: a closed connection is then the coordinator going away.
    """
    text = details.lower()
    cause = _last_error(details)
    if "connection refused" in text:
        return "connection refused: nothing listens there (is the coordinator started, and is this the port it printed?)"
    if "errors resolving" in text or "dns" in text or "name resolution" in text:
        return f"cannot resolve the host name ({cause}): check the spelling, or give an IP address"
    if not opts.insecure:
        if "wrong_version_number" in text or "http/1" in text:
            return ("the coordinator runs without TLS (--insecure) and this party with TLS: start both the same way "
                    "(the coordinator without --insecure and with --certs-dir, or this party with --insecure too for a "
                    f"local experiment) [{cause}]")
        if "hostname verification" in text or "peer name" in text:
            host = split_address(opts.server)[0]
            return (f"the coordinator's certificate is not made for the name {host!r}: connect by a name it lists "
                    f"(pollen certs --hosts), or pass --server-name NAME [{cause}]")
        if "handshake" in text or "ssl" in text or "certificate" in text:
            return (f"this party does not trust the coordinator's certificate [{cause}]: --certs-dir must hold the "
                    "ca.pem of the CA that made the coordinator's certificate")
    if "socket closed" in text or "connection reset" in text or "end of tcp stream" in text or "eof" in text:
        if joined:
            return f"the connection to the coordinator was lost (it stopped or restarted?) [{cause}]"
        if opts.insecure:
            return ("the coordinator closed the connection at once: it requires TLS and this party runs with "
                    f"--insecure; drop --insecure and pass --certs-dir with ca.pem and party-{opts.party_id}.pem/.key "
                    f"[{cause}]")
        return ("the coordinator closed the connection during the TLS handshake: it does not accept this party's "
                f"certificate (party-{opts.party_id}.pem from another CA than the coordinator's?) [{cause}]")
    if joined and (code == grpc.StatusCode.CANCELLED or "cancelling all calls" in text or "goaway" in text):
        # a coordinator that stops cancels the calls in flight (its long-poll for the next task), or sends
        # GOAWAY: they fail CANCELLED, or UNAVAILABLE "Cancelling all calls"
        return f"the connection to the coordinator was lost (it stopped or restarted?) [{cause}]"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer in time (a firewall dropping packets, or the wrong address?) [{cause}]"
    return f"{code.name}: {details}"


def failed_address(details: str) -> str:
    """The address gRPC's details name (``ipv4:127.0.0.1:9394``), or ``""``."""
    m = re.search(r"last error: \w+: (ipv[46]:\S+?:\d+):", details)
    return m.group(1) if m else ""


def _last_error(details: str) -> str:
    """The cause at the end of gRPC's details, short (``… last error: UNAVAILABLE: ipv4:…:PORT: Socket
    closed`` → ``Socket closed``; a TLS failure → ``TLS handshake failed: BAD_SIGNATURE (certificate signature failure)``)."""
    m = re.search(r"last error: \w+: (?:ipv[46]:\S+?:\d+: )?(.*)$", details)
    tail = (m.group(1) if m else details).strip()
    tls = re.search(r"OPENSSL_internal:([A-Z0-9_]+)(?::\s*([^:]+))?", tail)
    if tls:
        code, text = tls.group(1), (tls.group(2) or "").strip()
        # WRONG_VERSION_NUMBER comes with "Invalid certificate verification context", which misleads
        return f"TLS handshake failed: {code}" + (f" ({text})" if text and code != "WRONG_VERSION_NUMBER" else "")
    return tail


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


class _Outage:
    """A stretch of failed calls: when it began, after how many joins, and its most telling cause."""

    def __init__(self, since: float, joins: int) -> None:
        self.since, self.joins = since, joins
        self.telling: tuple[str, str] | None = None  # (address, why) of its last failure that was not a refusal

    def explain(self, code: grpc.StatusCode, details: str, opts: PartyOptions) -> str:
        """``explain_unreachable``, except that a refusal at another address does not hide a telling cause:
        "localhost" is [::1] and 127.0.0.1, and gRPC's details name only the address it tried last."""
        why = explain_unreachable(code, details, opts, joined=self.joins > 0)
        address = failed_address(details)
        if "connection refused" not in details.lower():
            self.telling = (address, why)
        elif self.telling is not None and self.telling[0] != address:
            return self.telling[1]
        return why


class GrpcParty:
    """Runs one party against a coordinator until the run ends.

    What a user needs to know is logged to ``pollen.party``: the app and data at start, joining,
    each failed attempt to reach the coordinator with its cause and the next retry (WARNING), and
    why this party cannot train.

    Args:
        opts: connection options.
    """

    def __init__(self, opts: PartyOptions, build: Callable[[PartyOptions, dict[str, Any]], Any] | None = None) -> None:
        split_address(opts.server)  # a host without a port is refused before anything starts
        self.opts = opts
        self._build = build or build_party  # another kind of party (pollen.vertical) brings its own builder
        self.party: LocalParty | None = None
        self.broken: str | None = None  # why this party cannot train (told to the coordinator with each task)
        self.session = ""
        self.rounds_done = 0
        self.joins = 0
        self._stopping = threading.Event()
        if opts.threads:
            import torch

            torch.set_num_threads(opts.threads)
        # Import the training stack now, before joining: on a loaded machine these imports can
        # hold the interpreter long enough to miss heartbeats right after the party joined.
        import pollen.client.trainer  # noqa: F401
        import pollen.compose  # noqa: F401

    def run(self) -> int:
        """Serve tasks until the coordinator says stop; returns the number of tasks answered.

        Raises:
            TransportError: refused by the coordinator, or unreachable for ``retry_seconds`` on end.
        """
        opts = self.opts
        log.info("party %s: %s, data %s; connecting to the coordinator at %s", opts.party_id,
                 f"app {opts.app}" if opts.app else "the coordinator's app", describe_data(opts), opts.server,
                 extra={"event": "start", "party": opts.party_id})
        backoff = Backoff(opts.backoff_base, opts.backoff_cap)
        outage: _Outage | None = None
        with make_channel(opts) as channel:
            stub = pb_grpc.FederationStub(channel)
            while not self._stopping.is_set():
                try:
                    if self._serve(stub, backoff):
                        return self.rounds_done
                    self._stopping.wait(backoff.next())  # the coordinator stops and may be resumed: wait for it
                except grpc.RpcError as exc:
                    code = exc.code()
                    if code == grpc.StatusCode.UNAUTHENTICATED:
                        continue  # session expired (coordinator restarted, or we were dropped): join again
                    if code not in RETRYABLE:
                        raise TransportError(f"coordinator refused party {opts.party_id}: {exc.details()}") from None
                    now = time.monotonic()
                    if outage is None or outage.joins != self.joins:  # a new outage: the clock starts again
                        outage = _Outage(now, self.joins)
                    why = outage.explain(code, exc.details() or "", opts)
                    left = opts.retry_seconds - (now - outage.since)
                    if left <= 0:
                        raise TransportError(f"gave up after {opts.retry_seconds:g} s without reaching the coordinator "
                                             f"at {opts.server} (--retry-seconds): {why}") from None
                    wait = min(backoff.next(), left)  # the last retry lands when the time is up, not after
                    log.warning("cannot reach the coordinator at %s: %s; retry %d in %.1f s (giving up in %.0f s)",
                                opts.server, why, backoff.attempt, wait, left,
                                extra={"event": "reconnect", "reason": code.name, "seconds": round(wait, 3)})
                    self._stopping.wait(wait)
            return self.rounds_done

    def _serve(self, stub: pb_grpc.FederationStub, backoff: Backoff) -> bool:
        """Join and answer tasks; True when the coordinator ended the run, False when it said it
        stops and may be resumed (``pollen server`` stopped by a signal or an error)."""
        opts = self.opts
        joined = stub.Join(pb.JoinRequest(protocol_version=PROTOCOL_VERSION, party_id=opts.party_id,
                                          num_examples=0), timeout=30)
        backoff.reset()
        self.joins += 1
        self.session = joined.session
        beat = _Heartbeat(stub, joined.session, joined.heartbeat_interval)
        beat.start()  # before building the model: that may take longer than a heartbeat interval
        try:
            if self.party is None and self.broken is None:
                self._setup(json.loads(joined.run_config_json))
            else:
                log.info("party %s joined the federation at %s again", opts.party_id, opts.server,
                         extra={"event": "join", "party": opts.party_id})
            while not self._stopping.is_set():
                msg = assemble(stub.GetTask(pb.TaskRequest(session=self.session, wait_seconds=POLL_SECONDS)), 2**62)
                if msg is None:
                    continue
                if msg.header.get("type") == "stop":
                    if msg.header.get("resumable"):
                        log.warning("%s; this party waits for it (up to --retry-seconds %g s once it is gone)",
                                    one_line(str(msg.header.get("reason") or "the coordinator stopped")),
                                    opts.retry_seconds, extra={"event": "coordinator_stopped"})
                        return False
                    return True
                task = task_from_message(msg.header, msg.payload)
                if self.party is None:
                    reply = Reply(task.party_id, task.kind, task.round, failure=f"party cannot train: {self.broken}")
                else:
                    reply = self.party.handle(task)
                    if reply.failure:
                        reply = replace(reply, failure=one_line(reply.failure))
                        log.warning("round %s (%s) failed here (the coordinator is told): %s", task.round, task.kind,
                                    reply.failure, extra={"event": "failed", "round": task.round, "reason": reply.failure})
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

    def _setup(self, welcome: dict[str, Any]) -> None:
        """Build this party from what the coordinator sent on joining, and say how it went."""
        opts = self.opts
        where = f"party {opts.party_id} joined the federation at {opts.server}"
        try:
            self.party = self._build(opts, welcome)
        except PollenError as exc:  # told to the coordinator with every task, so its operator sees it
            self.broken = one_line(f"{type(exc).__name__}: {exc}")
            log.error("%s but cannot train: %s", where, self.broken, extra={"event": "broken", "reason": self.broken})
            return
        app = describe_app(opts, welcome) if self._build is build_party else f"app {opts.app or 'built-in'}"
        log.info("%s; training with %s on %s (%d examples)", where, app, describe_data(opts),
                 self.party.num_examples, extra={"event": "join", "party": opts.party_id})

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
