"""The in-process transport: parties are objects in this process, tasks run when polled.

Used by inline simulation. The global model is handed to each party by reference (parties never
modify it), so a round costs no copies of the weights beyond loading them into the model.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from pollen.client.party import LocalParty
from pollen.types import Reply, Task
from pollen.transport.base import Transport


class InProcessTransport(Transport):
    """Runs each submitted task on its ``LocalParty`` when ``poll`` is called.

    Args:
        parties: party id → party runtime (a ``PartyPool`` builds them as tasks name them and keeps
            their state in its store).
    """

    def __init__(self, parties: Mapping[str, LocalParty]) -> None:
        self.parties = parties if hasattr(parties, "handle") else dict(parties)
        self._queue: deque[Task] = deque()

    def available(self) -> list[str]:
        return list(self.parties)

    def submit(self, task: Task) -> None:
        self._queue.append(task)

    def poll(self, timeout: float | None = None) -> Reply | None:
        if not self._queue:
            return None
        task = self._queue.popleft()
        if task.party_id not in self.parties:
            return Reply(task.party_id, task.kind, task.round, failure="unknown party")
        pool_handle = getattr(self.parties, "handle", None)
        return pool_handle(task) if pool_handle is not None else self.parties[task.party_id].handle(task)

    def pending(self) -> int:
        return len(self._queue)

    def forget(self, round: int) -> None:
        self._queue = deque(t for t in self._queue if t.round > round)
