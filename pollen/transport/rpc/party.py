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

import grpc
import numpy as np
import torch

from pollen.client.party import LocalParty
from pollen.errors import DataError, TransportError
from pollen.transport.rpc import pollen_pb2 as pb
from pollen.transport.rpc import pollen_pb2_grpc as pb_grpc
from pollen.transport.rpc.framing import PROTOCOL_VERSION, assemble, grpc_options, to_chunks
from pollen.transport.rpc.messages import reply_message, task_from_message
from pollen.transport.rpc.tls import party_name, read_file

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
        data_path: the party's shard folder (``pollen partition --out data/`` → ``data/party<i>``).
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
    data_path: str
    certs_dir: str = "certs"
    insecure: bool = False
    server_name: str | None = None
    retry_seconds: float = 300.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    threads: int | None = None


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


def load_party_data(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict]:
    """A shard's ``(x, y, original indices or None, meta)``."""
    from safetensors import safe_open

    from pollen.data import read_shard

    x, y, meta = read_shard(path)
    folder = Path(path)
    folder = folder.parent if folder.is_file() else folder
    with safe_open(str(folder / "data.safetensors"), framework="numpy") as f:
        index = f.get_tensor("index") if "index" in f.keys() else None
    return x, y, index, meta


def build_party(party_id: str, run_config: dict, x: np.ndarray, y: np.ndarray, index: np.ndarray | None,
                meta: dict) -> LocalParty:
    """The ``LocalParty`` of this process, built like simulation's (``Federation.make_parties``).

    Raises:
        DataError: the shard does not belong to the dataset the coordinator trains on.
    """
    from types import SimpleNamespace

    from pollen.client.party import Shard
    from pollen.client.trainer import Trainer
    from pollen.config import make_config
    from pollen.data import split_holdout
    from pollen.models import get_augmentation
    from pollen.simulation.build import make_model, make_pipeline

    cfg = make_config(run_config)
    if meta.get("dataset") != cfg.data.dataset:
        raise DataError(f"this party's shard is from dataset {meta.get('dataset')!r}, but the coordinator trains "
                        f"on {cfg.data.dataset!r}; partition the right dataset or start the server with --dataset")
    shape = SimpleNamespace(input_shape=tuple(meta["input_shape"]), num_classes=int(meta["num_classes"]))
    trainer = Trainer(make_model(cfg, shape), get_augmentation(cfg.model.augmentation))  # as simulation builds it
    pos = np.arange(len(y))
    train, val = split_holdout(pos, cfg.data.holdout, cfg.run.seed + int(party_id)) if cfg.data.holdout > 0 else (pos, pos[:0])
    if index is not None:  # order examples by their training-set index, as simulation does
        train, val = train[np.argsort(index[train], kind="stable")], val[np.argsort(index[val], kind="stable")]
    else:
        log.warning("shard has no 'index' tensor (written by an older pollen): example order differs from simulation")
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return LocalParty(party_id, Shard(xt, yt, torch.from_numpy(train)), trainer, Shard(xt, yt, torch.from_numpy(val)),
                      seed=cfg.run.seed, pipeline=make_pipeline(cfg))


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
        self.opts = opts
        self.x, self.y, self.index, self.meta = load_party_data(opts.data_path)
        self.party: LocalParty | None = None
        self.session = ""
        self.rounds_done = 0
        self._stopping = threading.Event()
        if opts.threads:
            torch.set_num_threads(opts.threads)
        # Import the training stack now, before joining: on a loaded machine these imports can
        # hold the interpreter long enough to miss heartbeats right after the party joined.
        import pollen.simulation.build  # noqa: F401

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
                    if now - unreachable_since > self.opts.retry_seconds:
                        raise TransportError(f"coordinator {self.opts.server} unreachable for {self.opts.retry_seconds:.0f} s "
                                             f"({code.name}: {exc.details()})") from None
                    wait = backoff.next()
                    log.info("coordinator unreachable (%s); retrying in %.2f s", code.name, wait,
                             extra={"event": "reconnect", "reason": code.name, "seconds": round(wait, 3)})
                    self._stopping.wait(wait)
            return self.rounds_done

    def _serve(self, stub: pb_grpc.FederationStub, backoff: Backoff) -> bool:
        """Join and answer tasks; True when the coordinator ended the run."""
        joined = stub.Join(pb.JoinRequest(protocol_version=PROTOCOL_VERSION, party_id=self.opts.party_id,
                                          num_examples=len(self.y)), timeout=30)
        backoff.reset()
        self.session = joined.session
        beat = _Heartbeat(stub, joined.session, joined.heartbeat_interval)
        beat.start()  # before building the model: that may take longer than a heartbeat interval
        try:
            if self.party is None:
                self.party = build_party(self.opts.party_id, json.loads(joined.run_config_json), self.x, self.y,
                                         self.index, self.meta)
            log.info("party %s joined", self.opts.party_id, extra={"event": "join", "party": self.opts.party_id})
            while not self._stopping.is_set():
                msg = assemble(stub.GetTask(pb.TaskRequest(session=self.session, wait_seconds=POLL_SECONDS)), 2**62)
                if msg is None:
                    continue
                if msg.header.get("type") == "stop":
                    return True
                reply = self.party.handle(task_from_message(msg.header, msg.payload))
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
