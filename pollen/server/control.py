"""Commands that steer a running coordinator: pause after the current round, resume, stop (the
last round's checkpoint is already written), change the next round's settings, remove or re-admit
a party.

Telemetry does not steer the loop (ARCHITECTURE.md). The control API and the dashboard's buttons
:meth:`Control.submit` commands from their own threads; each is validated at once (a bad value is
refused before it is queued) and applied by the round loop itself, between rounds, through one
hook: ``Coordinator.run`` calls :meth:`Control.between_rounds` before each round. While paused the
loop waits inside that hook. Every command that takes effect is emitted on the run's event bus as
a ``ControlApplied`` event naming who made it, so the run's history records it (``control`` in the
next round's line of history.jsonl and one line in ``control.jsonl``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pollen.errors import ConfigError
from pollen.telemetry.events import ControlApplied
from pollen.transport.base import Transport
from pollen.types import Reply, RoundConfig, Task

COMMANDS = ("pause", "resume", "stop", "reconfigure", "remove", "readmit")
SETTINGS = {"lr": ("train", "lr"), "epochs": ("train", "epochs"),
            "parties_per_round": ("federation", "parties_per_round"), "round_timeout": ("federation", "round_timeout")}


@dataclass(frozen=True)
class Command:
    """One control command.

    Attributes:
        kind: one of :data:`COMMANDS`.
        by: who made it (token name and address).
        args: ``reconfigure``: the new settings; ``remove``/``readmit``: ``{"party": id}``.
        at: wall-clock time it was made.
    """

    kind: str
    by: str
    args: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class _Overridden:
    """A client config whose learning rate and/or local epochs were set by a control command."""

    inner: Any
    lr: float | None = None
    epochs: int | None = None

    def configure(self, round: int, shared_names: tuple[str, ...] | None) -> RoundConfig:
        cfg = self.inner.configure(round, shared_names)
        changes = {k: v for k, v in (("lr", self.lr), ("epochs", self.epochs)) if v is not None}
        return cfg.with_(**changes) if changes else cfg


class Control:
    """The command queue of one run, shared by the control API and the round loop.

    Args:
        cfg: the run's configuration; new settings are validated against it with the same config
            model as the command line (``pollen.config.make_config``).
    """

    def __init__(self, cfg: Any = None) -> None:
        self.cfg = cfg
        self._cond = threading.Condition()
        self._queue: deque[Command] = deque()
        self._paused = False
        self._stopped = False
        self._waiting = False  # the loop is blocked in between_rounds (paused)
        self._finished = False
        self._round = 0  # rounds completed
        self._removed: set[str] = set()
        self._settings: dict[str, Any] = {}
        self._applied: list[dict[str, Any]] = []
        self._transport: Transport | None = None

    # ------------------------------------------------------------ wiring (pollen.compose)
    def bind(self, cfg: Any, transport: Transport, events: Any) -> Transport:
        """Attach the run's config and event bus; wrap its transport so that removed parties are
        not sampled."""
        from pollen.telemetry.events import RunCompleted

        self.cfg = cfg
        self._transport = transport
        events.subscribe(lambda e: self.finished() if isinstance(e, RunCompleted) else None)
        return ControlledTransport(transport, self)

    # ------------------------------------------------------------ the API side
    def submit(self, kind: str, by: str, **args: Any) -> Command:
        """Validate and queue a command; it takes effect before the next round.

        Raises:
            ConfigError: an unknown command, a setting out of its range, an unknown party, or a
                run that is already over.
        """
        if kind not in COMMANDS:
            raise ConfigError(f"unknown command {kind!r}; commands: {', '.join(COMMANDS)}")
        with self._cond:
            if self._finished or self._stopped:
                raise ConfigError("the run is over; start a new run to change anything")
        if kind == "reconfigure":
            args = self.validate_settings(args)
        elif kind in ("remove", "readmit"):
            args = {"party": self._check_party(str(args.get("party", "")), kind)}
        elif args:
            raise ConfigError(f"{kind} takes no arguments (got {sorted(args)})")
        cmd = Command(kind, by, args)
        with self._cond:
            self._queue.append(cmd)
            self._cond.notify_all()
        return cmd

    def validate_settings(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """The new settings, checked with the run's config model.

        Raises:
            ConfigError: an unknown setting or a value out of its range (the message names it).
        """
        from pollen.config import make_config, merge

        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown or not settings:
            raise ConfigError(f"settings that can change between rounds: {', '.join(SETTINGS)} (got {unknown or 'none'})")
        nested: dict[str, dict[str, Any]] = {}
        for key, value in settings.items():
            section, name = SETTINGS[key]
            nested.setdefault(section, {})[name] = value
        base = self.cfg.to_dict() if self.cfg is not None else {}
        checked = make_config(merge(base, nested))  # the CLI's own ranges and cross-checks
        if "epochs" in settings and checked.privacy.dp_sgd:
            raise ConfigError("local epochs cannot change under --dp-sgd: the noise was calibrated for "
                              f"{checked.train.epochs if self.cfg is None else self.cfg.train.epochs} epochs per round")
        out = {}
        for key in settings:
            section, name = SETTINGS[key]
            out[key] = getattr(getattr(checked, section), name)
        return out

    def _check_party(self, party: str, kind: str) -> str:
        known = self.known_parties()
        if party not in known:
            raise ConfigError(f"no party {party!r} in this federation (parties: {', '.join(sorted(known)[:20])}"
                              f"{', …' if len(known) > 20 else ''})")
        with self._cond:
            removed = set(self._removed) | {c.args["party"] for c in self._queue if c.kind == "remove"}
        if kind == "remove" and len(known - removed - {party}) == 0:
            raise ConfigError("at least one party must stay in the federation")
        return party

    def known_parties(self) -> set[str]:
        """The parties of the federation: those the transport knows, plus the removed ones."""
        t = self._transport
        ids: set[str] = set()
        if t is not None:
            connected = getattr(t, "connected", None)
            sessions = getattr(t, "sessions", None)
            if callable(sessions):
                ids = {s.party_id for s in sessions()}
            elif callable(connected):
                ids = set(connected())
            else:
                ids = set(t.available())
        elif self.cfg is not None:
            ids = {str(i) for i in range(self.cfg.data.parties)}
        return ids | self._removed

    def status(self) -> dict[str, Any]:
        """The control state: ``running``, ``pausing`` (asked, the current round goes on), ``paused``
        (the loop is waiting between rounds), ``stopping``, ``stopped`` or ``finished``; the
        settings changed so far, removed parties and commands not yet applied."""
        with self._cond:
            pending = [c.kind for c in self._queue]
            if self._finished:
                state = "stopped" if self._stopped else "finished"
            elif "stop" in pending:
                state = "stopping"
            elif self._waiting:
                state = "paused"
            elif self._will_pause(pending):
                state = "pausing"
            else:
                state = "running"
            return {"state": state, "round": self._round, "settings": dict(self._settings),
                    "removed": sorted(self._removed), "pending": pending, "applied": len(self._applied)}

    def _will_pause(self, pending: list[str]) -> bool:
        paused = self._paused
        for kind in pending:
            paused = True if kind == "pause" else False if kind == "resume" else paused
        return paused

    def wait_for(self, state: str, timeout: float | None = None) -> bool:
        """Block until :meth:`status` shows ``state`` (tests, scripts); False after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self.status()["state"] != state:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    @property
    def removed(self) -> frozenset[str]:
        with self._cond:
            return frozenset(self._removed)

    @property
    def stopped(self) -> bool:
        """True when a stop command ended the run early."""
        with self._cond:
            return self._stopped

    # ------------------------------------------------------------ the loop side
    def between_rounds(self, coordinator: Any, rnd: int) -> bool:
        """Apply the queued commands before round ``rnd``; wait here while paused.

        Returns:
            False when the run must stop (a stop command), True to run round ``rnd``.
        """
        with self._cond:
            self._round = rnd - 1
            self._cond.notify_all()
        while True:
            with self._cond:
                commands = list(self._queue)
                self._queue.clear()
            for cmd in commands:
                self._apply(cmd, coordinator, rnd)
            with self._cond:
                if self._queue:
                    continue  # commands that came while these were applied
                if self._stopped:
                    self._finished = True
                    self._cond.notify_all()
                    return False
                if not self._paused:
                    return True
                self._waiting = True
                self._cond.notify_all()
                while not self._queue:
                    self._cond.wait()
                self._waiting = False

    def finished(self) -> None:
        """The run ended (after its last round or a stop): later commands are refused."""
        with self._cond:
            self._finished = True
            self._cond.notify_all()

    def _apply(self, cmd: Command, coordinator: Any, rnd: int) -> None:
        with self._cond:
            if cmd.kind == "pause":
                self._paused = True
            elif cmd.kind == "resume":
                self._paused = False
            elif cmd.kind == "stop":
                self._stopped = True
            elif cmd.kind == "remove":
                self._removed.add(cmd.args["party"])
            elif cmd.kind == "readmit":
                self._removed.discard(cmd.args["party"])
            elif cmd.kind == "reconfigure":
                self._settings.update(cmd.args)
            record = {"round": rnd, "command": cmd.kind, "args": dict(cmd.args), "by": cmd.by, "at": cmd.at}
            self._applied.append(record)
            self._cond.notify_all()
        if cmd.kind == "reconfigure":
            self._reconfigure(coordinator, cmd.args)
        coordinator.events.emit(ControlApplied(rnd, cmd.kind, dict(cmd.args), cmd.by, cmd.at))

    def _reconfigure(self, coordinator: Any, settings: Mapping[str, Any]) -> None:
        strategy = coordinator.strategy
        if "lr" in settings or "epochs" in settings:
            client = strategy.client
            inner = client.inner if isinstance(client, _Overridden) else client
            lr = settings.get("lr", client.lr if isinstance(client, _Overridden) else None)
            epochs = settings.get("epochs", client.epochs if isinstance(client, _Overridden) else None)
            strategy = replace(strategy, client=_Overridden(inner, lr, epochs))
        if "parties_per_round" in settings:
            strategy = replace(strategy, sampler=replace(strategy.sampler, count=settings["parties_per_round"]))
        coordinator.strategy = strategy
        if "round_timeout" in settings:
            coordinator.round_timeout = settings["round_timeout"]


class ControlledTransport(Transport):
    """A transport whose ``available()`` leaves out the parties a control command removed."""

    def __init__(self, inner: Transport, control: Control) -> None:
        self.inner = inner
        self.control = control

    def available(self) -> list[str]:
        removed = self.control.removed
        return [p for p in self.inner.available() if p not in removed]

    def submit(self, task: Task) -> None:
        self.inner.submit(task)

    def poll(self, timeout: float | None = None) -> Reply | None:
        return self.inner.poll(timeout)

    def pending(self) -> int:
        return self.inner.pending()

    def clock(self) -> float | None:
        return self.inner.clock()

    def forget(self, round: int) -> None:
        self.inner.forget(round)

    def fold_into(self, sink: object, round: int) -> bool:
        return self.inner.fold_into(sink, round)

    def sent_bytes(self, party_id: str, round: int, kind: str) -> int | None:
        return self.inner.sent_bytes(party_id, round, kind)

    @property
    def measures_bytes(self) -> bool:  # type: ignore[override]
        return bool(self.inner.measures_bytes)

    @property
    def serves_files(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.inner, "serves_files", False))

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # what a protocol step asks of the real transport
        return getattr(self.inner, name)
