"""Per-party state on disk with an in-memory LRU: memory bounded by the parties training at once.

What a party keeps between rounds — SCAFFOLD's control variate cᵢ, a codec's error-feedback
residual, its privacy ledger (DP-SGD's history, local DP's participations), FedBN/FedPer's private
layers — lives in ``LocalParty.state``. With 100,000 simulated parties that cannot all stay in
memory, so every backend (inline, process pool, Ray) keeps it in a :class:`PartyStateStore`:

- ``get(pid)`` returns the party's live state dict: from the LRU, else read from disk, else empty;
- ``save(pid, state, round)`` writes it through to disk after each task (one safetensors file per
  party: arrays as tensors, JSON-able values in the metadata, never pickle), so a party whose
  worker or Ray actor died, or a whole run that crashed, finds its state again;
- the file of the previous round is kept beside the current one, so that a run resumed from its
  checkpoint after round ``s − 1`` reads the state as it was then (``resume_round=s``), not a state
  already advanced by a round that is about to be replayed.

Keys listed as ``volatile`` (secure aggregation's round secrets, an HE secret key) are never
written: they stay in memory only, for the round that needs them.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pollen.errors import RunError

META = "pollen_party_state"


def _bucket(party_id: str) -> str:
    from pollen.client.party import party_index

    return f"{party_index(party_id) % 1024:04d}"


class PartyStateStore:
    """Per-party state: an LRU of ``capacity`` states in memory over one file per party on disk.

    Args:
        root: the folder of the state files (``<run>/party_state``); None keeps everything in
            memory (no eviction, nothing survives the process).
        capacity: states kept in memory (at least the parties that train at once).
        volatile: state keys never written to disk.
        resume_round: a run resumed at this round reads the state saved before it (None: the newest).
    """

    def __init__(self, root: str | Path | None, capacity: int = 1024, volatile: Iterable[str] = (),
                 resume_round: int | None = None) -> None:
        self.root = None if root is None else Path(root)
        self.capacity = max(1, int(capacity))
        self.volatile = frozenset(volatile)
        self.resume_round = resume_round
        self._lru: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.reads = self.writes = 0  # counters (tests, benchmarks)

    # ------------------------------------------------------------ the interface
    def get(self, party_id: str) -> dict[str, Any]:
        """The party's live state dict (mutate it, then ``save``)."""
        with self._lock:
            state = self._lru.get(party_id)
            if state is not None:
                self._lru.move_to_end(party_id)
                return state
        state = self._read(party_id) if self.root is not None else {}
        with self._lock:
            state = self._lru.setdefault(party_id, state)
            self._lru.move_to_end(party_id)
            if self.root is not None:
                while len(self._lru) > self.capacity:  # written through already: dropping loses nothing
                    self._lru.popitem(last=False)
        return state

    def save(self, party_id: str, state: Mapping[str, Any], round: int) -> None:
        """Write the party's state (its persistable keys) after a task of ``round``."""
        with self._lock:
            if party_id in self._lru:
                self._lru[party_id] = state if isinstance(state, dict) else dict(state)
        if self.root is None:
            return
        keep = {k: v for k, v in state.items() if k not in self.volatile}
        path = self._path(party_id)
        if not keep and not path.exists():
            return
        arrays, values = _flatten(party_id, keep)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and _round_of(path) < round:
            os.replace(path, path.with_suffix(".prev"))  # the state as it was before this round
        tmp = path.with_suffix(".tmp")
        from safetensors.numpy import save_file

        save_file(arrays, str(tmp), metadata={META: json.dumps({"round": round, "values": values})})
        os.replace(tmp, path)
        self.writes += 1

    def in_memory(self) -> int:
        """States held in memory now."""
        return len(self._lru)

    def clear_memory(self) -> None:
        """Drop every in-memory state (what a crashed process loses)."""
        with self._lock:
            self._lru.clear()

    # ------------------------------------------------------------ files
    def _path(self, party_id: str) -> Path:
        assert self.root is not None
        safe = party_id.replace("/", "_")
        return self.root / _bucket(party_id) / f"{safe}.safetensors"

    def _read(self, party_id: str) -> dict[str, Any]:
        path = self._path(party_id)
        for candidate in (path, path.with_suffix(".prev")):
            if not candidate.exists():
                continue
            if self.resume_round is not None and _round_of(candidate) >= self.resume_round:
                continue  # written by a round the resumed run replays
            self.reads += 1
            return _load(candidate, party_id)
        return {}


def _round_of(path: Path) -> int:
    return int(_meta(path).get("round", -1))


def _meta(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return json.loads((f.metadata() or {}).get(META, "{}"))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own types
        raise RunError(f"party state file {path} is unreadable ({exc}); delete it to restart that party's state") from None


def _flatten(party_id: str, state: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(tensors ``key`` / ``key/name``, JSON-able values); values of other types are refused."""
    arrays: dict[str, np.ndarray] = {}
    values: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            arrays[key] = np.require(value, requirements="C")  # not ascontiguousarray: it makes 0-d arrays 1-d
        elif isinstance(value, Mapping) and value and all(isinstance(v, np.ndarray) for v in value.values()):
            for name, arr in value.items():
                arrays[f"{key}/{name}"] = np.require(arr, requirements="C")
            values.setdefault("__dicts__", []).append(key)
        else:
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                raise RunError(f"party {party_id}: state {key!r} ({type(value).__name__}) is neither arrays nor JSON; "
                               "mark it volatile (PartyTables.volatile_keys) or store arrays") from None
            values[key] = value
    return arrays, values


def _load(path: Path, party_id: str) -> dict[str, Any]:
    from safetensors.numpy import load_file

    meta = _meta(path)
    values = dict(meta.get("values", {}))
    dicts = set(values.pop("__dicts__", []))
    state: dict[str, Any] = dict(values)
    for name, arr in load_file(str(path)).items():
        key, sep, sub = name.partition("/")
        if sep and key in dicts:
            state.setdefault(key, {})[sub] = arr
        else:
            state[name] = arr
    return state
