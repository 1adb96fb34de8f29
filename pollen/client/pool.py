"""Simulated parties built when they are asked for, kept in an LRU, their state in a store.

A federation of 100,000 simulated parties must not cost 100,000 parties' data and state in memory.
:class:`PartyPool` is a read-only mapping ``party id → LocalParty`` over all the ids that exists
without building them: a party is built (its data loaded only when it trains or evaluates) the
first time a task names it, kept among the ``capacity`` most recently used, and its state comes
from and goes back to a :class:`~pollen.client.state_store.PartyStateStore` after every task. The
inline transport, each process-pool worker and each Ray actor hold one.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence

from pollen.client.party import LocalParty
from pollen.client.state_store import PartyStateStore
from pollen.types import Reply, Task


class PartyPool(Mapping[str, LocalParty]):
    """Parties by id, built on demand.

    Args:
        ids: every party id this pool serves.
        make: builds one party (its data loaded lazily).
        store: where parties' state lives between tasks.
        capacity: parties (with their loaded data) kept in memory.
    """

    def __init__(self, ids: Sequence[str], make: Callable[[str], LocalParty], store: PartyStateStore,
                 capacity: int) -> None:
        self._ids = ids
        self._known = ids if isinstance(ids, PartyIds) else frozenset(ids)
        self._make = make
        self.store = store
        self.capacity = max(1, int(capacity))
        self._cache: OrderedDict[str, LocalParty] = OrderedDict()
        self.built = 0  # parties built so far (tests: only the sampled ones)

    def __getitem__(self, party_id: str) -> LocalParty:
        party = self._cache.get(party_id)
        if party is not None:
            self._cache.move_to_end(party_id)
            return party
        if party_id not in self:
            raise KeyError(party_id)
        party = self._make(party_id)
        party.state = self.store.get(party_id)
        self.built += 1
        self._cache[party_id] = party
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)  # its state is on disk (saved after each task)
        return party

    def __contains__(self, party_id: object) -> bool:
        return party_id in self._known

    def __iter__(self) -> Iterator[str]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        """Every party id, in order."""
        return list(self._ids)

    def loaded(self) -> dict[str, LocalParty]:
        """The parties in memory now (never builds one)."""
        return dict(self._cache)

    def handle(self, task: Task) -> Reply:
        """Run a task on its party and save the party's state."""
        party = self[task.party_id]
        reply = party.handle(task)
        self.store.save(task.party_id, party.state, task.round)
        return reply


class PartyIds(Sequence[str]):
    """``"0" … "N-1"`` without a list of N strings."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [str(j) for j in range(self.n)[i]]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return str(i % self.n)

    def __iter__(self) -> Iterator[str]:
        return map(str, range(self.n))

    def __contains__(self, party_id: object) -> bool:
        return isinstance(party_id, str) and party_id.isdigit() and int(party_id) < self.n and str(int(party_id)) == party_id
