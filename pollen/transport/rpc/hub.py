"""The coordinator's side of the gRPC transport: parties, their sessions, queues and liveness.

``GrpcTransport`` implements :class:`pollen.transport.base.Transport`, so the coordinator's round
loop is the same one simulation runs. The gRPC service (``service.py``) calls into it from its
worker threads: a party long-polls for its next task, uploads its reply, and sends heartbeats.
A party whose heartbeats stop for 1.5 intervals is dropped (detected within two intervals): its
open tasks come back as failed replies at once, so a dead party costs its reply, not the round's
deadline.
"""

from __future__ import annotations

import logging
import queue
import secrets
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pollen.transport.base import Transport
from pollen.transport.rpc import pollen_pb2 as pb
from pollen.transport.rpc.framing import CHUNK_BYTES, to_chunks
from pollen.transport.rpc.messages import state_payload, task_header
from pollen.transport.rpc.tensors import Encoded
from pollen.types import Reply, Task

log = logging.getLogger("pollen.transport.grpc")
DEAD_AFTER = 1.5  # heartbeat intervals of silence before a party is dropped
WATCH_EVERY = 0.1  # heartbeat intervals between two sweeps: a dead party goes within DEAD_AFTER + WATCH_EVERY
QUORUM_LOG_EVERY = 30.0  # seconds between two lines while a round waits for --min-parties
REPLY_BYTES_PER_ELEMENT = 16  # a float64 update twice over: plain, top-k (index + value), masked field vectors
REPLY_SLACK = 1 << 20  # bytes for tensor names, codec metadata and headers

TaskKey = tuple[str, int, str]  # (party id, round, kind)


@dataclass
class Session:
    """One connected party."""

    party_id: str
    token: str
    peer: str
    last_seen: float
    alive: bool = True
    queued: deque[Task] = field(default_factory=deque)
    inflight: dict[TaskKey, Task] = field(default_factory=dict)
    forgotten: set[TaskKey] = field(default_factory=set)
    tasks_done: int = 0


@dataclass
class NetStats:
    """Counters of the transport, read by ``pollen status`` and the Prometheus collector."""

    bytes_in: int = 0
    bytes_out: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    dropped: int = 0
    joins: int = 0
    late_replies: int = 0
    progress: dict[str, Any] = field(default_factory=dict)  # round, rounds, phase, accuracy


def _key(task: Task) -> TaskKey:
    return (task.party_id, task.round, task.kind)


class GrpcTransport(Transport):
    """Parties connected over gRPC, as the coordinator sees them.

    Byte counts are measured on the wire (``measures_bytes``): a reply's ``bytes_down`` is what was
    streamed of its task, 0 for a task never sent.

    Args:
        heartbeat_interval: seconds between a party's heartbeats.
        chunk_bytes: payload bytes per streamed chunk.
        min_parties: ``available()`` first waits until this many parties are connected, so a
            round never starts below the quorum (a party that dropped out is waited for).
        quorum_timeout: longest such wait in seconds (None: for ever); after it the round goes
            on with the parties there are. The wait is logged when it starts and every
            ``QUORUM_LOG_EVERY`` seconds, naming the missing parties.
        members: the federation's party ids (to name the missing ones), or None.
        reply_bytes_per_element: the most bytes a reply may carry per element of the model it
            answers (``reply_limit``; raise it for encodings that expand updates, such as CKKS).
    """

    measures_bytes = True
    serves_files = True  # a task's tensors may live in a file (``pollen.server.spill``): streamed from it

    def __init__(self, heartbeat_interval: float = 5.0, chunk_bytes: int = CHUNK_BYTES, min_parties: int = 0,
                 quorum_timeout: float | None = None, members: Sequence[str] | None = None,
                 reply_bytes_per_element: int = REPLY_BYTES_PER_ELEMENT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.heartbeat_interval = heartbeat_interval
        self._clock = clock  # of liveness only (heartbeats and sweeps): a test's fake clock makes them exact
        self.min_parties = min_parties
        self.quorum_timeout = quorum_timeout
        self.chunk_bytes = chunk_bytes
        self.members = list(members) if members is not None else None
        self.reply_bytes_per_element = reply_bytes_per_element
        self._model_elements = 0  # elements of the largest model a fit task carried (bounds stage replies)
        self._stop: dict[str, Any] = {"type": "stop"}
        self.stats = NetStats()
        self._sessions: dict[str, Session] = {}  # party id -> its current session
        self._by_token: dict[str, Session] = {}
        self._open: dict[TaskKey, Task] = {}
        self._down: dict[TaskKey, int] = {}
        self._replies: queue.Queue[Reply] = queue.Queue()
        self._cond = threading.Condition()
        self._closing = False
        self._told_stop: set[str] = set()
        self._cache: tuple[object, Encoded] | None = None
        self._sink: tuple[Any, int] | None = None  # (running sum, round): fit uploads folded as they arrive
        self._cache_lock = threading.Lock()
        self._monitor = threading.Thread(target=self._watch, name="pollen-heartbeats", daemon=True)
        self._monitor.start()

    # ------------------------------------------------------------ Transport interface
    def available(self) -> list[str]:
        if self.min_parties and not self._closing and not self._quorum():
            log.warning("only %d of --min-parties=%d parties connected after %g s (missing: %s); going on with them",
                        len(self.connected()), self.min_parties, self.quorum_timeout, self.missing(),
                        extra={"event": "quorum_timeout", "seconds": self.quorum_timeout})
        return self.connected()

    def _quorum(self) -> bool:
        """Wait for ``min_parties`` (at most ``quorum_timeout``), saying so while it waits."""
        if len(self.connected()) >= self.min_parties:
            return True
        started = time.monotonic()
        while True:
            left = None if self.quorum_timeout is None else self.quorum_timeout - (time.monotonic() - started)
            budget = "for ever (--quorum-timeout)" if left is None else f"at most {max(left, 0):.0f} s more"
            log.warning("waiting for --min-parties=%d: %d connected (missing: %s); waiting %s",
                        self.min_parties, len(self.connected()), self.missing(), budget,
                        extra={"event": "quorum_wait", "seconds": round(time.monotonic() - started, 1)})
            step = QUORUM_LOG_EVERY if left is None else min(QUORUM_LOG_EVERY, max(left, 0.0))
            if self.wait_for_parties(self.min_parties, step):
                return True
            if self._closing or (left is not None and left <= step):
                return False

    def missing(self) -> str:
        """The members not connected, in words."""
        if self.members is None:
            return "unknown ids"
        here = set(self.connected())
        gone = [p for p in self.members if p not in here]
        return ", ".join(gone[:10]) + (f" and {len(gone) - 10} more" if len(gone) > 10 else "") if gone else "none"

    def connected(self) -> list[str]:
        """Ids of the parties connected and alive now (never waits)."""
        with self._cond:
            return sorted((s.party_id for s in self._sessions.values() if s.alive), key=_id_order)

    def submit(self, task: Task) -> None:
        with self._cond:
            key = _key(task)
            self._open[key] = task
            if task.kind == "fit":
                self._model_elements = max(self._model_elements, _elements(task))
            s = self._sessions.get(task.party_id)
            if s is None or not s.alive:
                self._fail(key, "party not connected")
                return
            s.queued.append(task)
            self._cond.notify_all()

    def poll(self, timeout: float | None = None) -> Reply | None:
        try:
            return self._replies.get(timeout=timeout)
        except queue.Empty:
            return None

    def pending(self) -> int:
        with self._cond:
            return len(self._open) + self._replies.qsize()

    def forget(self, round: int) -> None:
        with self._cond:
            for s in self._sessions.values():
                s.queued = deque(t for t in s.queued if t.round > round)
                for key in s.inflight:
                    if key[1] <= round:
                        s.forgotten.add(key)
            for key in [k for k in self._open if k[1] <= round]:
                del self._open[key]
            for key in [k for k in self._down if k[1] < round]:  # byte counts nobody will ask for any more
                del self._down[key]

    def fold_into(self, sink: Any, round: int) -> bool:
        self._sink = None if sink is None else (sink, round)
        return True

    def sink_for(self, task: Task) -> Any:
        """The running sum a fit reply to ``task`` is folded into chunk by chunk, or None."""
        target = self._sink
        return target[0] if target is not None and task.kind == "fit" and task.round == target[1] else None

    def close(self, reason: str | None = None, resumable: bool = False) -> None:
        """End the run for the parties: each is told ``stop`` at its next poll, with ``reason`` and
        whether the coordinator may be resumed (then parties wait for it instead of leaving)."""
        with self._cond:
            if not self._closing:
                self._stop = {"type": "stop", **({"reason": reason} if reason else {}), "resumable": resumable}
            self._closing = True
            self._cond.notify_all()

    def stop_message(self) -> dict[str, Any]:
        """The header a polling party gets once the run is over (``close``)."""
        with self._cond:
            return dict(self._stop)

    def sent_bytes(self, party_id: str, round: int, kind: str) -> int | None:
        """Bytes streamed of a task that got no reply (a straggler's): 0 for a task never sent."""
        with self._cond:
            return self._down.pop((party_id, round, kind), 0)

    def reply_limit(self, task: Task) -> int:
        """The most payload bytes a reply to ``task`` may declare: ``reply_bytes_per_element`` per
        element of the model it answers (a fit task's own; a protocol stage's, the round's model),
        plus ``REPLY_SLACK`` for names and headers."""
        elements = _elements(task)
        if task.kind not in ("fit", "evaluate"):
            with self._cond:
                elements = max(elements, self._model_elements)
        return self.reply_bytes_per_element * elements + REPLY_SLACK

    def task_bytes(self, task: Task) -> int:
        """Bytes of a task's payload (what streaming it must move)."""
        return int(sum(v.nbytes for v in task.state.values()))

    def wait_stopped(self, timeout: float) -> None:
        """After ``close``: wait until every live party was told to stop (at most ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(s.alive and s.party_id not in self._told_stop for s in self._sessions.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(timeout=left)

    @property
    def closing(self) -> bool:
        """True once the run is over (parties polling are told to stop)."""
        return self._closing

    def wait_for_parties(self, count: int, timeout: float | None) -> bool:
        """Block until ``count`` parties are connected; False after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len([s for s in self._sessions.values() if s.alive]) < count and not self._closing:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(timeout=min(left, 1.0) if left is not None else 1.0)
        return True

    # ------------------------------------------------------------ called by the gRPC service
    def join(self, party_id: str, peer: str) -> Session:
        """Open a new session for ``party_id`` (a reconnecting party replaces its old one)."""
        with self._cond:
            old = self._sessions.get(party_id)
            if old is not None:
                self._drop(old, "party reconnected; its earlier task is lost")
                self._by_token.pop(old.token, None)
            s = Session(party_id, secrets.token_urlsafe(24), peer, self._clock())
            self._sessions[party_id] = s
            self._by_token[s.token] = s
            self.stats.joins += 1
            self._cond.notify_all()
        log.info("party %s joined from %s", party_id, peer, extra={"event": "join", "party": party_id, "peer": peer})
        return s

    def session(self, token: str) -> Session | None:
        """The live session of a token, refreshing its heartbeat; None if unknown or dropped."""
        with self._cond:
            s = self._by_token.get(token)
            if s is None or not s.alive:
                return None
            s.last_seen = self._clock()
            return s

    def leave(self, s: Session) -> None:
        """A party leaves on purpose."""
        with self._cond:
            self._drop(s, "party left")
            self._by_token.pop(s.token, None)
        log.info("party %s left", s.party_id, extra={"event": "leave", "party": s.party_id})

    def revoke(self, party_id: str) -> None:
        """Drop a revoked party's session, if it has one (its open tasks fail at once)."""
        with self._cond:
            s = self._sessions.get(party_id)
            if s is not None and s.alive:
                self._drop(s, "party revoked")
                self._by_token.pop(s.token, None)
                log.warning("party %s is revoked: dropped", party_id, extra={"event": "revoked", "party": party_id})

    def next_task(self, s: Session, wait: float, active: Callable[[], bool] | None = None) -> Task | None | str:
        """The party's next task, ``None`` after ``wait`` seconds without one (or once ``active()``
        turns False: the caller went away), ``"stop"`` at the end."""
        deadline = time.monotonic() + wait
        with self._cond:
            while not self._closing and s.alive and not s.queued:
                left = deadline - time.monotonic()
                if left <= 0 or (active is not None and not active()):
                    return None
                self._cond.wait(timeout=min(left, 1.0) if active is not None else left)
            if self._closing:
                self._told_stop.add(s.party_id)
                self._cond.notify_all()
                return "stop"
            if not s.alive:
                return None
            task = s.queued.popleft()
            s.inflight[_key(task)] = task
            return task

    def stream_task(self, s: Session, task: Task) -> Iterator[pb.Chunk]:
        """The chunks of a task; bytes sent are counted for the reply's ``bytes_down``."""
        key, sent = _key(task), 0
        try:
            for chunk in to_chunks(task_header(task), self._payload(task), chunk_bytes=self.chunk_bytes):
                sent += chunk.ByteSize()
                yield chunk
        finally:
            with self._cond:
                self._down[key] = sent
                self.stats.bytes_out += sent

    def open_task(self, s: Session, party_id: str, rnd: int, kind: str) -> Task | str:
        """The in-flight task a reply answers, ``"late"`` for a forgotten one, or a refusal reason."""
        with self._cond:
            key = (party_id, rnd, kind)
            if key in s.forgotten:
                s.forgotten.discard(key)
                s.inflight.pop(key, None)
                self.stats.late_replies += 1
                return "late"
            task = s.inflight.get(key)
            return task if task is not None else f"no open {kind} task for party {party_id} in round {rnd} (replayed or stale message)"

    def deliver(self, s: Session, reply: Reply, bytes_up: int) -> None:
        """Hand a checked reply to the round loop."""
        with self._cond:
            key = (reply.party_id, reply.round, reply.kind)
            s.inflight.pop(key, None)
            s.tasks_done += 1
            self.stats.bytes_in += bytes_up
            if self._open.pop(key, None) is None:
                return
            self._replies.put(replace(reply, bytes_up=bytes_up, bytes_down=self._down.pop(key, 0)))

    def reject(self, reason: str, detail: str, s: Session | None = None, key: TaskKey | None = None) -> None:
        """Count and log a refused message; a refused reply costs its party that task."""
        log.warning("refused message (%s): %s", reason, detail,
                    extra={"event": "refused", "reason": reason, "party": s.party_id if s else None})
        with self._cond:
            self.stats.rejected[reason] += 1
            if s is not None and key is not None and key in s.inflight:
                s.inflight.pop(key)
                self._fail(key, f"reply refused: {detail}")

    def sessions(self) -> list[Session]:
        """All known sessions (for status)."""
        with self._cond:
            return list(self._sessions.values())

    # ------------------------------------------------------------ internals
    def _payload(self, task: Task) -> Encoded:
        # Every party of a round gets the same global model: lay it out once per round.
        with self._cache_lock:
            if self._cache is None or self._cache[0] is not task.state:
                self._cache = (task.state, state_payload(task.state))
            return self._cache[1]

    def _fail(self, key: TaskKey, reason: str) -> None:
        task = self._open.pop(key, None)
        if task is not None:
            self._replies.put(Reply(task.party_id, task.kind, task.round, failure=reason,
                                    bytes_down=self._down.pop(key, 0)))

    def _drop(self, s: Session, reason: str) -> None:
        s.alive = False
        for task in [*s.queued, *s.inflight.values()]:
            self._fail(_key(task), reason)
        s.queued.clear()
        s.inflight.clear()
        self._cond.notify_all()

    def sweep(self) -> list[str]:
        """Drop every party silent for more than ``DEAD_AFTER`` heartbeat intervals (its open tasks
        fail at once); the ids dropped. The watcher thread calls it every ``WATCH_EVERY`` intervals."""
        now = self._clock()
        dropped = []
        with self._cond:
            for s in list(self._sessions.values()):
                silent = now - s.last_seen
                if s.alive and silent > DEAD_AFTER * self.heartbeat_interval:
                    self.stats.dropped += 1
                    log.warning("party %s silent for %.1f s: dropped", s.party_id, silent,
                                extra={"event": "dropped", "party": s.party_id, "seconds": round(silent, 2)})
                    self._drop(s, f"party lost: no heartbeat for {silent:.1f} s")
                    self._by_token.pop(s.token, None)
                    dropped.append(s.party_id)
        return dropped

    def _watch(self) -> None:
        while not self._closing:
            time.sleep(self.heartbeat_interval * WATCH_EVERY)
            self.sweep()


def _elements(task: Task) -> int:
    return int(sum(v.size for v in task.state.values()))


def _id_order(party_id: str) -> tuple[int, int | str]:
    return (0, int(party_id)) if party_id.isdigit() else (1, party_id)
