"""A party's privacy ledger: its accountants and its answered tasks, on its own disk.

A party's privacy budget is the party's (ARCHITECTURE.md, "Trust"): the ledger keeps what the
party's accountants need (``PartyTables.durable_keys``: DP-SGD's step history, local party-level
DP's participations) in a folder next to the party's data, and writes it atomically (a temporary
file, ``fsync``, ``os.replace``, ``fsync`` of the folder) *before* an update leaves the party. So:

- a restarted party continues from its ledger (it never trains again from ε = 0);
- a task re-issued after a coordinator crash — byte-identical, since the coordinator resumes from
  its checkpoint — is answered with the reply already sent, neither retrained nor charged twice
  (sending the same release again reveals nothing new);
- a party refuses a task that would take it past its budget, whatever the coordinator asks: the
  budget (ε, δ and the accountant) is pinned when the ledger is created (from the party's own
  ``--max-epsilon``, else from the run config the party joined with) and a later config cannot
  raise it; the refusal is written to the ledger and reported to the coordinator, whose history
  shows it under ``failures``.

The ledger adds up what the party's data has spent across runs: it belongs to the data, not to
one run. Starting a fresh budget is a deliberate act (move the folder aside).

Layout of a ledger folder::

    ledger.json          budget, durable accountant state, one entry per charge or refusal
    reply-<digest>.bin   the last fit reply sent (safetensors, ``pollen.serialization``)
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pollen.errors import ConfigError, PrivacyError, ProtocolError
from pollen.types import Reply, Task, Update

BUDGET_KEY = "privacy_budget"  # LocalParty.state entry holding the pinned budget (read by DP-SGD)
LEDGER_FILE = "ledger.json"
VERSION = 1
KEEP_REPLIES = 1  # a coordinator resumes the round in progress: the last reply is the one re-asked for


@dataclass(frozen=True)
class Budget:
    """What a party agreed to spend on its records.

    Attributes:
        epsilon: the most ε the party may spend (None: no limit, ε is only recorded).
        delta: δ of the guarantee (every ε in the ledger is at this δ).
        accountant: ``rdp`` or ``prv`` (DP-SGD's accounting).
    """

    epsilon: float | None
    delta: float | None
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        if self.epsilon is not None and not self.epsilon > 0:
            raise ConfigError(f"a privacy budget needs ε > 0; got {self.epsilon} (e.g. --max-epsilon 8)")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ConfigError(f"a privacy budget needs 0 < δ < 1; got {self.delta} (e.g. --delta 1e-5, below 1/records)")

    @classmethod
    def from_config(cls, cfg: Any, max_epsilon: float | None = None, delta: float | None = None) -> "Budget":
        """The budget a config states (``--target-epsilon``, ``--delta``), under the party's own limits."""
        p = cfg.privacy
        eps = p.target_epsilon if max_epsilon is None else max_epsilon
        return cls(eps, p.delta if delta is None else delta, p.accountant)


def needs_ledger(cfg: Any) -> bool:
    """True when parties spend privacy themselves (DP-SGD, or local party-level DP)."""
    return bool(cfg.privacy.dp_sgd or cfg.privacy.client_dp == "local")


def default_dir(data_path: str | Path | None, party_id: str) -> Path:
    """Where a deployed party keeps its ledger: next to its data (``data/party0`` →
    ``data/party0.ledger``), or ``pollen-ledger-party<id>`` in the working folder without ``--data``."""
    if data_path is None:
        return Path(f"pollen-ledger-party{party_id}")
    p = Path(data_path).expanduser()
    return p.parent / f"{p.name}.ledger"


def budget_of(party_state: Mapping[str, Any], settings: Mapping[str, Any]) -> tuple[float | None, float]:
    """``(target ε, δ)`` a DP-SGD task must respect: the party's pinned budget when it has one
    (the stricter ε of the pinned and the asked; always the pinned δ), else the task's."""
    target, delta = settings.get("target_epsilon"), settings["delta"]
    pinned = party_state.get(BUDGET_KEY)
    if not pinned:
        return target, delta
    if pinned.get("epsilon") is not None:
        target = pinned["epsilon"] if target is None else min(target, pinned["epsilon"])
    return target, pinned.get("delta") or delta


def task_digest(task: Task) -> str:
    """SHA-256 of what a task asks: kind, round, config and every array (names, dtypes, shapes,
    bytes). A task re-issued after a coordinator crash has the same digest."""
    h = hashlib.sha256()
    h.update(json.dumps([task.kind, task.round, task.config.to_dict()], sort_keys=True, default=str).encode())
    h.update(_state_digest(task.state))
    return h.hexdigest()


_last: list[Any] = []  # (state object, its digest): every party of a round gets the same model object


def _state_digest(state: Mapping[str, np.ndarray]) -> bytes:
    if _last and _last[0] is state:
        return _last[1]
    h = hashlib.sha256()
    for name, arr in state.items():
        a = np.ascontiguousarray(arr)
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(memoryview(a).cast("B"))
    _last[:] = [state, h.digest()]
    return _last[1]


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old file or the new one, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Ledger:
    """One party's ledger folder.

    Args:
        folder: the folder (created on the first write).
        party_id: the party (recorded, and checked against an existing ledger).
        budget: the budget to pin when the ledger is new; an existing ledger keeps its own, except
            that an explicit ``override`` (the party operator's ``--max-epsilon``) replaces it.
        override: True when ``budget`` comes from the party's own operator, not from a run config.

    Raises:
        PrivacyError: the folder holds another party's ledger, or an unreadable one (a party never
            trains from ε = 0 because its ledger could not be read).
    """

    def __init__(self, folder: str | Path, party_id: str, budget: Budget | None = None, override: bool = False) -> None:
        self.folder = Path(folder)
        self.party_id = party_id
        self.data: dict[str, Any] = {"version": VERSION, "party": party_id, "budget": None, "state": {},
                                     "entries": [], "replies": {}}
        path = self.folder / LEDGER_FILE
        if path.exists():
            try:
                self.data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise PrivacyError(f"privacy ledger {path} is unreadable ({exc}); this party will not train without "
                                   "it. Restore it from a backup (or move it aside to start a new budget)") from None
            if str(self.data.get("party")) != party_id:
                raise PrivacyError(f"{path} is party {self.data.get('party')}'s privacy ledger, not party {party_id}'s: "
                                   "give each party its own --ledger folder")
        if budget is not None and (self.data.get("budget") is None or override):
            self.data["budget"] = asdict(budget)

    # ------------------------------------------------------------ reading
    @property
    def budget(self) -> dict[str, Any] | None:
        """The pinned budget (``Budget`` as a dict), or None."""
        return self.data.get("budget")

    @property
    def state(self) -> dict[str, Any]:
        """The accountants' durable state (``LocalParty.state`` entries)."""
        return self.data.get("state", {})

    @property
    def entries(self) -> list[dict[str, Any]]:
        """Every charge (``epsilon`` after it) and refusal (``refused``: why), oldest first."""
        return self.data.get("entries", [])

    def spent(self, state: Mapping[str, Any] | None = None, reported: float | None = None) -> float:
        """ε spent at the pinned δ by ``state`` (default: the ledger's): DP-SGD's steps recounted
        with the pinned accountant; local party-level DP as its step ``reported`` it."""
        state = self.state if state is None else state
        eps = 0.0
        hist = (state.get("dp_sgd") or {}).get("history")
        budget = self.budget or {}
        if hist and budget.get("delta"):
            from pollen.privacy.accountant import make_accountant

            acc = make_accountant(budget.get("accountant") or "rdp")
            acc.load_state_dict({"history": hist})
            eps = acc.get_epsilon(budget["delta"])
        if reported is not None and math.isfinite(reported):
            eps = max(eps, float(reported))
        return eps

    def cached(self, digest: str) -> Update | None:
        """The update already sent for the task with ``digest``, or None."""
        name = self.data.get("replies", {}).get(digest)
        if name is None:
            return None
        from pollen.serialization import reply_from_bytes

        try:
            reply = reply_from_bytes((self.folder / name).read_bytes())
        except (OSError, ProtocolError) as exc:  # a lost reply file: retraining would charge twice
            raise PrivacyError(f"the reply this party sent for round {_round_of(self.entries, digest)} is recorded in "
                               f"its ledger but cannot be read ({exc}); refusing to train the same task again") from None
        return reply.update

    # ------------------------------------------------------------ answering a fit task
    def answer(self, task: Task, party_state: MutableMapping[str, Any], durable_keys: frozenset[str],
               fit: Callable[[], Update]) -> Update:
        """``fit()``'s update for ``task``, charged to the ledger before it is returned; or the
        update already sent for an identical task.

        Raises:
            PrivacyError: the update would take the party past its budget (its state is rolled back:
                nothing left the party, nothing was spent), or the ledger cannot be written.
        """
        digest = task_digest(task)
        update = self.cached(digest)
        if update is not None:
            return update.with_(metrics={**update.metrics, "ledger_cached": 1.0})
        before = copy.deepcopy({k: party_state[k] for k in durable_keys if k in party_state})
        try:
            update = fit()
            eps = self.spent(party_state, update.metrics.get("epsilon_party"))
            limit = (self.budget or {}).get("epsilon")
            if limit is not None and eps > limit * (1 + 1e-9):
                raise PrivacyError(f"privacy budget exhausted: round {task.round} would spend ε={eps:.3f} > this "
                                   f"party's budget {limit} (δ={self.budget.get('delta')}); its update is not sent")
            self._commit(task, digest, update, party_state, durable_keys, eps)
        except BaseException as exc:
            for k in durable_keys:  # roll back: the accountant spent nothing, since nothing left
                party_state.pop(k, None)
            party_state.update(before)
            if isinstance(exc, PrivacyError):
                self.refuse(task, str(exc))
            if isinstance(exc, OSError):
                raise PrivacyError(f"cannot write the privacy ledger in {self.folder} ({exc}); the update is not sent "
                                   "(free disk space or fix the folder's permissions)") from None
            raise
        return update

    def refuse(self, task: Task, reason: str) -> None:
        """Record that this party refused ``task`` (best effort: a refusal never depends on the disk)."""
        self.data.setdefault("entries", []).append({"round": task.round, "kind": task.kind, "refused": reason,
                                                     "at": time.time()})
        try:
            self.save()
        except OSError:
            pass

    def _commit(self, task: Task, digest: str, update: Update, party_state: Mapping[str, Any],
                durable_keys: frozenset[str], eps: float) -> None:
        from pollen.serialization import reply_to_bytes

        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"reply-{digest[:32]}.bin"
        write_atomic(self.folder / name, reply_to_bytes(Reply(self.party_id, task.kind, task.round, update=update)))
        old = dict(self.data.get("replies", {}))
        kept = list(old.items())[len(old) - KEEP_REPLIES + 1:] if KEEP_REPLIES > 1 else []
        self.data["replies"] = {**dict(kept), digest: name}
        self.data["state"] = json.loads(json.dumps({k: party_state[k] for k in durable_keys if k in party_state}))
        self.data.setdefault("entries", []).append({"round": task.round, "kind": task.kind, "task": digest,
                                                     "epsilon": eps, "at": time.time()})
        self.save()  # the commit point: from here the update may leave
        for d, stale in old.items():
            if d not in self.data["replies"] and stale != name:
                (self.folder / stale).unlink(missing_ok=True)  # a crash before this leaves a stray file only

    def save(self) -> None:
        """Write ``ledger.json`` atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.folder / LEDGER_FILE, json.dumps(self.data, indent=1).encode())

    def drop_replies(self) -> None:
        """Delete the cached replies (a finished simulation needs them no more); the budget stays."""
        for name in self.data.get("replies", {}).values():
            (self.folder / name).unlink(missing_ok=True)
        if self.data.get("replies"):
            self.data["replies"] = {}
            self.save()


def _round_of(entries: list[dict[str, Any]], digest: str) -> Any:
    return next((e["round"] for e in reversed(entries) if e.get("task") == digest), "?")
