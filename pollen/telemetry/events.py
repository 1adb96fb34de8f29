"""Events emitted by the round loop, and a bus that hands them to subscribed sinks.

The loop only emits; sinks (history file, progress display, Prometheus, …) decide what to do.
A sink that raises is reported once and then ignored: telemetry never stops a run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("pollen.telemetry")


@dataclass(frozen=True)
class RunStarted:
    """A run begins (or resumes at ``start_round``)."""

    rounds: int
    start_round: int
    parties: int
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundStarted:
    """A round begins with these sampled parties."""

    round: int
    parties: tuple[str, ...]


@dataclass(frozen=True)
class PartyReplied:
    """One party's reply arrived (``failure`` set when it failed)."""

    round: int
    party_id: str
    kind: str
    seconds: float
    failure: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # what the party reported (train loss, ε, …)
    bytes_up: int = 0  # bytes of its reply as received


@dataclass(frozen=True)
class RoundCompleted:
    """A round finished; ``record`` is its line of history.jsonl."""

    round: int
    record: dict[str, Any]


@dataclass(frozen=True)
class RunCompleted:
    """The run finished (``record`` holds the final summary)."""

    record: dict[str, Any]


@dataclass(frozen=True)
class RunOpened:
    """A run folder was opened (``pollen.compose.open_run``): where the run writes, and its config."""

    path: str
    config: dict[str, Any]
    name: str = ""


@dataclass(frozen=True)
class RunFinished:
    """The run folder is complete (``pollen.compose.finish_run``): model, summary and report written."""

    path: str
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ControlApplied:
    """A control command took effect between rounds (``pollen.server.control``).

    Attributes:
        round: the round it applies before (the last completed round + 1).
        command: pause, resume, stop, reconfigure, remove or readmit.
        args: the command's arguments (the new settings, the party id).
        by: who made it (the token's name and the caller's address).
        at: wall-clock time the command was made (seconds since the epoch).
    """

    round: int
    command: str
    args: dict[str, Any]
    by: str
    at: float


Event = RunStarted | RoundStarted | PartyReplied | RoundCompleted | RunCompleted | RunOpened | RunFinished | ControlApplied
Sink = Callable[[Event], None]


class StopRun(Exception):
    """Raised by a callback to end a run after the event in hand (early stopping, a tuner pruning
    a trial): the one exception the bus passes on. Every round already completed stays in the run
    folder (history, checkpoints); the run's caller receives this exception."""


class EventBus:
    """Delivers events to subscribed sinks, in subscription order."""

    def __init__(self) -> None:
        self._sinks: list[Sink] = []
        self._broken: set[int] = set()

    def subscribe(self, sink: Sink) -> None:
        """Add a sink (any callable taking an event)."""
        self._sinks.append(sink)

    def emit(self, event: Event) -> None:
        """Hand ``event`` to every working sink."""
        for i, sink in enumerate(self._sinks):
            if i in self._broken:
                continue
            try:
                sink(event)
            except StopRun:
                raise
            except Exception as exc:  # noqa: BLE001 - a sink must never stop the run
                self._broken.add(i)
                log.warning("telemetry sink %r failed and is disabled: %s", sink, exc)
