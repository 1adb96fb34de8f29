"""What a caller can hold on the coordinator: concurrent calls per identity, calls in total before
anyone is identified, and a deadline on every call (ARCHITECTURE.md, "Trust": nothing is spent on a
caller before it is authenticated).

The gRPC service takes a place with :meth:`Guard.acquire` at the top of every RPC, with the caller's identity from its
TLS certificate (``party-<id>``, ``admin``) or None when it has none yet (``--insecure``: the session
in the first chunk identifies it). A caller over its share is refused with ``RESOURCE_EXHAUSTED``
at once — it never waits for a worker thread, so a flood of calls (or of stalled streams) from one
identity cannot take the threads the others need. A watchdog thread cancels every call still open
past its deadline: a stream that stalls is cut, and its thread comes back.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

PER_CALLER = 6  # a party uses 3 at once (long poll, reply upload, heartbeat); room for a reconnect's overlap
ANONYMOUS = 16  # calls in total from callers not identified yet
FIRST_CHUNK_SECONDS = 30.0  # an upload's first chunk must arrive within this
IDLE_SECONDS = 60.0  # a stream may go this long without a chunk
MIN_RATE = 256 * 1024  # bytes/s: an upload of N bytes gets at least N / MIN_RATE + IDLE_SECONDS


class Refused(Exception):
    """A caller over its share of concurrent calls."""


class Call:
    """One open call: its deadline, which the service moves as a stream makes progress."""

    def __init__(self, guard: Guard, context: Any, deadline: float, key: str) -> None:
        self.guard, self.context, self.deadline, self.key = guard, context, deadline, key
        self.expired = False  # the watchdog cancelled it

    def until(self, seconds: float) -> None:
        """The call must end within ``seconds`` from now."""
        with self.guard._lock:
            self.deadline = self.guard.clock() + max(0.0, seconds)

    def progress(self, limit: float) -> None:
        """A chunk arrived: the call may go ``IDLE_SECONDS`` more without one, but never past ``limit``
        (a monotonic time)."""
        with self.guard._lock:
            self.deadline = min(limit, self.guard.clock() + self.guard.idle)


class Guard:
    """Per-identity and anonymous concurrency limits, and a deadline on every call.

    Args:
        per_caller: concurrent calls one identity may hold.
        anonymous: concurrent calls, in total, of callers not identified yet.
        idle: seconds a stream may go without a chunk.
        clock: monotonic seconds (tests pass their own).
        tick: seconds between two rounds of the watchdog.
    """

    def __init__(self, per_caller: int = PER_CALLER, anonymous: int = ANONYMOUS, idle: float = IDLE_SECONDS,
                 clock: Callable[[], float] = time.monotonic, tick: float = 0.25) -> None:
        self.per_caller, self.anonymous, self.idle, self.clock, self.tick = per_caller, anonymous, idle, clock, tick
        self._lock = threading.Condition()  # notified when a call's place is given back
        self._active: Counter[str] = Counter()
        self._calls: set[Call] = set()
        self._stopped = threading.Event()
        self.cancelled = 0  # calls the watchdog cut (for tests and status)
        self._watchdog = threading.Thread(target=self._watch, name="pollen-call-deadlines", daemon=True)
        self._watchdog.start()

    def acquire(self, caller: str | None, context: Any, seconds: float) -> Call:
        """Take one of ``caller``'s concurrent calls (release it with :meth:`release`); the call must
        end within ``seconds``.

        Raises:
            Refused: ``caller`` (or the anonymous pool, for None) already holds all its calls.
        """
        key = _key(caller)
        with self._lock:
            self._take(key, caller)
            call = Call(self, context, self.clock() + seconds, key)
            self._calls.add(call)
        return call

    def identify(self, call: Call, caller: str) -> None:
        """Move an anonymous call to ``caller``'s share (its identity became known).

        Raises:
            Refused: ``caller`` already holds all its calls (the call keeps its anonymous place).
        """
        with self._lock:
            if call.key == _key(caller):
                return
            self._take(_key(caller), caller)
            self._give(call.key)
            call.key = _key(caller)

    def release(self, call: Call) -> None:
        """Give a call's place back."""
        with self._lock:
            if call in self._calls:
                self._calls.discard(call)
                self._give(call.key)

    def _take(self, key: str, caller: str | None) -> None:
        limit = self.per_caller if caller is not None else self.anonymous
        if self._active[key] >= limit:
            who = f"{caller!r}" if caller is not None else "callers not yet identified"
            raise Refused(f"{who} already hold {limit} concurrent calls; wait for one to end")
        self._active[key] += 1

    def _give(self, key: str) -> None:
        self._active[key] -= 1
        if self._active[key] <= 0:
            del self._active[key]
        self._lock.notify_all()

    def active(self) -> dict[str, int]:
        """Concurrent calls held now, by caller (``"\\0anonymous"`` for the unidentified)."""
        with self._lock:
            return dict(self._active)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no call holds a place (False: ``timeout`` seconds passed first)."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._active, timeout)

    def close(self) -> None:
        """Stop the watchdog."""
        self._stopped.set()

    def _watch(self) -> None:
        while not self._stopped.wait(self.tick):
            now = self.clock()
            with self._lock:
                late = [c for c in self._calls if not c.expired and c.deadline <= now]
                for c in late:
                    c.expired = True
                    self.cancelled += 1
            for c in late:
                try:
                    c.context.cancel()  # the call's reads end, its writes fail: its thread comes back
                except Exception:  # noqa: BLE001 - a call that already ended
                    pass


def _key(caller: str | None) -> str:
    return caller if caller is not None else "\0anonymous"
