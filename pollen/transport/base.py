"""The transport interface: how the coordinator reaches parties, and nothing else.

The round loop submits ``Task``s and polls for ``Reply``s as they arrive. A transport does not know
about rounds' logic; the coordinator does not know whether a party is a function call, a process
or a machine across the world.

Contract (tested against every implementation in ``tests/transport/test_contract.py``):

- ``available()`` lists the ids of parties that can take a task now.
- ``submit(task)`` hands a task to ``task.party_id`` and returns at once.
- ``poll(timeout)`` returns the next finished ``Reply`` (a failure is a reply with ``failure``
  set), or ``None`` when none finished within ``timeout`` seconds (``None`` waits for ever).
- ``pending()`` counts submitted tasks not yet returned by ``poll``.
- ``clock()`` is None, or the virtual time of a simulated clock (heterogeneous party speeds).
- ``close()`` releases resources; the transport is unusable afterwards.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from pollen.types import Reply, Task


class Transport(ABC):
    """Carries tasks to parties and their replies back.

    Attributes:
        measures_bytes: True when the transport counts the bytes it actually sends and receives:
            every reply's ``bytes_down``/``bytes_up`` is then exact (0 for a task never sent), and
            ``sent_bytes`` answers for tasks that got no reply. Otherwise the coordinator counts
            each task's serialised size.
        serves_files: True when a task's tensors may be placeholders of a file (``file_span``:
            ``pollen.server.spill``) that the transport streams to the party from disk; a big
            streamed round then keeps its global model out of memory.
    """

    measures_bytes = False
    serves_files = False

    @abstractmethod
    def available(self) -> list[str]:
        """Ids of the parties that can take a task now."""

    @abstractmethod
    def submit(self, task: Task) -> None:
        """Hand a task to its party; returns immediately."""

    @abstractmethod
    def poll(self, timeout: float | None = None) -> Reply | None:
        """The next finished reply, or None after ``timeout`` seconds without one."""

    @abstractmethod
    def pending(self) -> int:
        """Submitted tasks whose replies have not been returned yet."""

    def clock(self) -> float | None:
        """Virtual seconds elapsed on a simulated clock (``SimulatedClock``); None on real time."""
        return None

    def sent_bytes(self, party_id: str, round: int, kind: str) -> int | None:
        """Bytes sent of a task that got no reply (None: this transport does not measure)."""
        return None

    def forget(self, round: int) -> None:
        """Discard tasks of ``round`` (and earlier) not yet started (stragglers past a deadline)."""

    def fold_into(self, sink: object, round: int) -> bool:
        """Optional: fold the fit replies of ``round`` into ``sink`` (a running sum) as their bytes
        arrive, instead of assembling them (``None`` stops). Returns True when this transport does;
        the replies then come back with their update already folded. Default: it does not."""
        return False

    def close(self) -> None:
        """Release resources."""

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
