"""The dashboard's live feed: a sink on the event bus that keeps what a running federation looks
like now — its rounds, and each party's state, last contact, rounds taken part in, metrics, ε and
bytes — for readers in other threads (the web dashboard's API).

It only listens (telemetry never steers the loop); the dashboard's buttons go through
``pollen.server.control``. Only what parties report as metrics and counts is kept: never their
data or their updates.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pollen.telemetry.events import (ControlApplied, Event, PartyReplied, RoundCompleted, RoundStarted, RunCompleted,
                                     RunFinished, RunOpened, RunStarted)

PartiesFn = Callable[[], Mapping[str, Mapping[str, Any]]]
LATE = "no reply before the round's deadline"


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def party_state(failure: str) -> str:
    """The dashboard's state of a party whose reply failed with ``failure``."""
    text = failure.lower()
    if "budget" in text:
        return "out of budget"
    if "refused" in text or "invalid" in text or "decode" in text:
        return "refused"
    if any(w in text for w in ("lost", "not connected", "left", "reconnected", "dropped")):
        return "dropped"
    if text == LATE or "deadline" in text:
        return "late"
    return "failed"


class LiveRun:
    """A running federation's state, kept current by the round loop's events.

    Args:
        connected: a function giving the transport's parties (``{id: {"alive": bool,
            "last_seen": unix time}}``), set by a deployed coordinator once its port is open.
        simulated: the parties are ``0 … N-1`` of the config, all there from the start.
    """

    def __init__(self, connected: PartiesFn | None = None, simulated: bool = True) -> None:
        self.connected = connected
        self.simulated = simulated
        self._lock = threading.Condition()
        self.name = ""
        self.path: str | None = None
        self.config: dict[str, Any] = {}
        self.state = "starting"
        self.rounds_planned = 0
        self.current_round = 0
        self.started = time.time()
        self.ended: float | None = None
        self._rounds: list[dict[str, Any]] = []
        self._parties: dict[str, dict[str, Any]] = {}
        self._control: list[dict[str, Any]] = []
        self.version = 0  # bumped on every change (readers poll or wait on it)

    # ------------------------------------------------------------ the sink
    def __call__(self, event: Event) -> None:
        with self._lock:
            self._on(event)
            self.version += 1
            self._lock.notify_all()

    def _on(self, event: Event) -> None:
        now = time.time()
        if isinstance(event, RunOpened):
            self.name, self.path, self.config = event.name, event.path, event.config
            n = int(event.config.get("data", {}).get("parties", 0) or 0)
            if self.simulated:  # a simulation: every party exists from the start
                for i in range(min(n, 100_000)):
                    self._party(str(i))
        elif isinstance(event, RunStarted):
            self.state, self.rounds_planned = "running", event.rounds
            self.current_round = event.start_round - 1
        elif isinstance(event, RoundStarted):
            self.current_round = event.round
            for pid in event.parties:
                p = self._party(pid)
                p.update(state="training", round=event.round, last_seen=p.get("last_seen"))
        elif isinstance(event, PartyReplied):
            p = self._party(event.party_id)
            p["last_seen"] = now
            if event.failure:
                p.update(state=party_state(event.failure), reason=event.failure[:300])
                p["failures"] += 1
            else:
                p.update(state="replied", reason=None)
                p["rounds"] += 1
                p["seconds"] = round(event.seconds, 4)
                p["bytes_up"] += int(event.bytes_up)
                for k, v in event.metrics.items():
                    if (x := _num(v)) is not None:
                        p["metrics"][k] = x
                        if k.startswith("epsilon"):
                            p["epsilon"] = x
        elif isinstance(event, RoundCompleted):
            rec = event.record
            self._rounds.append(dict(rec))
            for pid, reason in (rec.get("failures") or {}).items():
                p = self._party(pid)
                if reason == LATE:
                    p.update(state="late", reason=reason)
                    p["failures"] += 1
            sampled = len(rec.get("parties", [])) + len(rec.get("parties_failed", []))
            down = rec.get("bytes_down")
            for pid in rec.get("parties", []):
                if sampled and isinstance(down, (int, float)):
                    self._party(pid)["bytes_down"] += int(down / sampled)
            for key, values in rec.items():
                if key.startswith("fed_") and key.endswith("_parties") and isinstance(values, dict):
                    metric = key[len("fed_"):-len("_parties")]
                    for pid, v in values.items():
                        self._party(pid)["metrics"][f"held-out {metric}"] = _num(v)
        elif isinstance(event, RunCompleted):
            self.state = "finished"
            self.ended = now
        elif isinstance(event, RunFinished):
            self.state = "finished"
        elif isinstance(event, ControlApplied):
            self._control.append({"round": event.round, "command": event.command, "args": event.args,
                                  "by": event.by, "at": event.at})
            if event.command == "remove":
                self._party(event.args["party"])["removed"] = True
            elif event.command == "readmit":
                self._party(event.args["party"])["removed"] = False
            elif event.command == "stop":
                self.state = "stopped"

    def _party(self, pid: str) -> dict[str, Any]:
        p = self._parties.get(pid)
        if p is None:
            p = {"id": pid, "state": "connected", "last_seen": None, "rounds": 0, "failures": 0, "round": None,
                 "metrics": {}, "epsilon": None, "bytes_up": 0, "bytes_down": 0, "seconds": None, "reason": None,
                 "removed": False}
            self._parties[pid] = p
        return p

    # ------------------------------------------------------------ readers (other threads)
    def rounds(self, after: int = 0) -> list[dict[str, Any]]:
        """Round records with ``round > after`` (the dashboard asks only for new ones)."""
        with self._lock:
            if not self._rounds or self._rounds[-1].get("round", 0) <= after:
                return []
            return [r for r in self._rounds if r.get("round", 0) > after]

    def parties(self) -> list[dict[str, Any]]:
        """Every party's row: state, last seen, rounds taken part in, metrics, ε, bytes."""
        seen = dict(self.connected()) if self.connected is not None else {}
        with self._lock:
            for pid in seen:
                self._party(pid)
            rows = []
            for pid, p in self._parties.items():
                row = {**p, "metrics": dict(p["metrics"])}
                info = seen.get(pid)
                if info is not None:
                    if info.get("last_seen") is not None:
                        row["last_seen"] = max(row["last_seen"] or 0, info["last_seen"])
                    if not info.get("alive", True) and row["state"] not in ("out of budget", "refused"):
                        row["state"] = "dropped"
                elif self.connected is not None and row["state"] in ("connected", "replied"):
                    row["state"] = "dropped"  # gone from the transport
                if row["removed"]:
                    row["state"] = "removed"
                rows.append(row)
        return sorted(rows, key=lambda r: (0, int(r["id"])) if r["id"].isdigit() else (1, r["id"]))

    def control_log(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._control)

    def summary(self) -> dict[str, Any]:
        """The run's headline: state, rounds done and planned, when it started."""
        with self._lock:
            return {"name": self.name, "state": self.state, "round": self.current_round,
                    "rounds_done": len(self._rounds), "rounds": self.rounds_planned, "started": self.started,
                    "ended": self.ended, "version": self.version}

    def wait(self, version: int, timeout: float) -> int:
        """Block until something changed after ``version`` (or ``timeout`` s); the new version."""
        with self._lock:
            self._lock.wait_for(lambda: self.version != version, timeout)
            return self.version
