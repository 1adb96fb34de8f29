"""A simulated clock for heterogeneous parties: each fit task takes a virtual duration
``slowness × work`` (work = its measured compute seconds, or ``steps × step_seconds``), and
replies come back in virtual-time order. Random dropouts turn a task into a failure reply at the
virtual time it would have finished (a heartbeat/timeout would detect it no sooner).

It wraps any ``Transport`` (in-process, process pool), so synchronous FedAvg and asynchronous
FedBuff run unchanged over it and can be compared on virtual wall time
(``virtual_seconds`` in the history). This is a discrete-event simulation: before returning the
earliest finished reply, every task submitted so far is run, so a reply is never returned ahead
of one that would have finished earlier.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping, Sequence

import numpy as np

from pollen.client.party import party_index
from pollen.errors import ConfigError
from pollen.transport.base import Transport
from pollen.types import Reply, Task


def party_slowness(spec: str | None, party_ids: Sequence[str], rng: np.random.Generator) -> dict[str, float]:
    """Per-party slowness factors (multipliers of compute time) from a spec.

    ``constant`` (all 1), ``lognormal:SIGMA`` (exp of N(0, σ²), median 1), ``uniform:LO:HI``.

    Raises:
        ConfigError: an unknown kind or bad numbers.
    """
    text = (spec or "constant").strip()
    kind, _, rest = text.partition(":")
    try:
        args = [float(a) for a in rest.split(":")] if rest else []
    except ValueError:
        raise ConfigError(f"party speed {text!r}: parameters must be numbers (e.g. lognormal:1.0)") from None
    n = len(party_ids)
    if kind == "constant" and not args:
        factors = np.ones(n)
    elif kind == "lognormal" and len(args) == 1 and args[0] >= 0:
        factors = np.exp(rng.normal(0.0, args[0], n))
    elif kind == "uniform" and len(args) == 2 and 0 < args[0] <= args[1]:
        factors = rng.uniform(args[0], args[1], n)
    else:
        raise ConfigError(f"party speed {text!r} is not understood; use constant, lognormal:SIGMA (σ ≥ 0) "
                          "or uniform:LO:HI (0 < LO ≤ HI)")
    return {pid: float(f) for pid, f in zip(party_ids, factors)}


class SimulatedClock(Transport):
    """Wraps ``inner`` with virtual time, party slowness and dropouts.

    Args:
        inner: the transport that runs the tasks.
        slowness: party id → compute-time multiplier (missing parties: 1).
        dropout: probability that a fit task is dropped.
        seed: seeds each task's dropout draw (from seed, party, round).
        step_seconds: virtual seconds per local step; None uses the measured compute seconds.
    """

    def __init__(self, inner: Transport, slowness: Mapping[str, float], dropout: float = 0.0, seed: int = 0,
                 step_seconds: float | None = None) -> None:
        if not 0 <= dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1); got {dropout}")
        self.inner = inner
        self.slowness = dict(slowness)
        self.dropout = dropout
        self.seed = seed
        self.step_seconds = step_seconds
        self._now = 0.0
        self._started: dict[tuple[str, str, int], float] = {}
        self._heap: list[tuple[float, int, Reply]] = []
        self._seq = itertools.count()

    def available(self) -> list[str]:
        return self.inner.available()

    def clock(self) -> float:
        return self._now

    def submit(self, task: Task) -> None:
        self._started[(task.party_id, task.kind, task.round)] = self._now
        self.inner.submit(task)

    def duration(self, reply: Reply) -> float:
        """Virtual seconds ``reply``'s task took (evaluation and other kinds: 0)."""
        if reply.kind != "fit":
            return 0.0
        work = reply.seconds
        if self.step_seconds is not None and reply.update is not None:
            work = float(reply.update.metrics.get("steps", 0.0)) * self.step_seconds
        return self.slowness.get(reply.party_id, 1.0) * work

    def _dropped(self, reply: Reply) -> bool:
        if reply.kind != "fit" or self.dropout == 0:
            return False
        rng = np.random.default_rng([self.seed, party_index(reply.party_id), reply.round, 0xD40])
        return bool(rng.random() < self.dropout)

    def _admit(self, reply: Reply) -> None:
        start = self._started.pop((reply.party_id, reply.kind, reply.round), self._now)
        finish = start + self.duration(reply)
        if self._dropped(reply):
            reply = Reply(reply.party_id, reply.kind, reply.round, failure="dropped out (simulated)",
                          seconds=reply.seconds)
        heapq.heappush(self._heap, (finish, next(self._seq), reply))

    def poll(self, timeout: float | None = None) -> Reply | None:
        while self.inner.pending() > 0:  # run everything submitted: the earliest finish is then known
            reply = self.inner.poll(None)
            if reply is None:
                break
            self._admit(reply)
        if not self._heap:
            return None
        finish, _, reply = heapq.heappop(self._heap)
        self._now = max(self._now, finish)
        return reply

    def pending(self) -> int:
        return self.inner.pending() + len(self._heap)

    def forget(self, round: int) -> None:
        self.inner.forget(round)
        self._heap = [e for e in self._heap if e[2].round > round]
        heapq.heapify(self._heap)

    def close(self) -> None:
        self.inner.close()


def with_simulated_clock(transport: Transport, cfg) -> Transport:
    """``transport`` wrapped in a ``SimulatedClock`` when the config asks for party speeds or
    dropouts (``--party-speed``, ``--dropout``, ``--step-seconds``); otherwise unchanged."""
    s = cfg.strategy
    if s.party_speed is None and s.dropout == 0 and s.step_seconds is None:
        return transport
    ids = sorted(transport.available(), key=party_index)
    rng = np.random.default_rng([cfg.run.seed, 0x5EED])
    return SimulatedClock(transport, party_slowness(s.party_speed, ids, rng), s.dropout, cfg.run.seed, s.step_seconds)
