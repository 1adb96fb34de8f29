"""The live progress display on the terminal: round, accuracy, loss, time, ETA.

On a terminal it is a rich progress bar; elsewhere (CI logs, pipes) one plain line per round.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from pollen.telemetry.events import Event, PartyReplied, RoundCompleted, RunCompleted, RunStarted


def _fmt(v: object, spec: str = ".4f") -> str:
    return "—" if v is None else format(v, spec)


class ProgressSink:
    """Shows progress of a run. ``live=None`` picks rich on a TTY and plain lines otherwise."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None, title: str = "pollen") -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.title = title
        self._progress = None
        self._task = None
        self._t0 = 0.0
        self._first = 1
        self._rounds = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._t0 = time.perf_counter()
            self._first, self._rounds = event.start_round, event.rounds
            if self.live:
                from rich.console import Console
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

                self._progress = Progress(
                    TextColumn(f"[bold]{self.title}[/] round"), MofNCompleteColumn(), BarColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=Console(file=self.stream), transient=False,
                )
                self._progress.start()
                self._task = self._progress.add_task("run", total=event.rounds, completed=event.start_round - 1, status="")
        elif isinstance(event, PartyReplied) and event.failure and not self.live:
            print(f"  party {event.party_id} failed in round {event.round}: {event.failure}", file=self.stream, flush=True)
        elif isinstance(event, RoundCompleted):
            r = event.record
            status = f"acc {_fmt(r.get('accuracy'))} loss {_fmt(r.get('loss'))}"
            if r.get("epsilon") is not None:
                status += f" ε {r['epsilon']:.2f}"
            if r.get("parties_failed"):
                status += f" failed {len(r['parties_failed'])}"
            if self._progress is not None:
                self._progress.update(self._task, completed=event.round, status=status)
            else:
                done = event.round - self._first + 1
                elapsed = time.perf_counter() - self._t0
                eta = elapsed / max(done, 1) * (self._rounds - event.round)
                print(f"round {event.round}/{self._rounds}  {status}  {r.get('seconds', 0):.1f}s  "
                      f"elapsed {elapsed:.0f}s  ETA {eta:.0f}s", file=self.stream, flush=True)
        elif isinstance(event, RunCompleted) and self._progress is not None:
            self._progress.stop()
            self._progress = None
