"""The live progress display on the terminal: round, parties done within the round, the primary
metric, loss, time and an ETA that is there from round 1 on (estimated from the parties already
done), and every party failure with its reason.

On a terminal it is a rich progress bar; elsewhere (CI logs, pipes) one plain line per round, and
a line about the round in progress when it runs long.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from pollen.telemetry.events import Event, PartyReplied, RoundCompleted, RoundStarted, RunCompleted, RunStarted

PLAIN_PARTY_LINE_SECONDS = 15.0  # plain output: at most one "parties done" line this often


def _fmt(v: object, spec: str = ".4f") -> str:
    return "—" if not isinstance(v, (int, float)) else format(v, spec)


def _duration(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class ProgressSink:
    """Shows progress of a run. ``live=None`` picks rich on a TTY and plain lines otherwise.

    Args:
        stream: where to write (stderr by default).
        live: rich display (True), plain lines (False), or by whether ``stream`` is a terminal.
        title: the run's name.
        metric: the primary metric shown per round.
    """

    def __init__(self, stream: TextIO | None = None, live: bool | None = None, title: str = "pollen",
                 metric: str = "accuracy") -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.title = title
        self.metric = metric
        self._progress = None
        self._task = None
        self._t0 = 0.0
        self._first = 1
        self._rounds = 0
        self._round = 0
        self._sampled = 0
        self._done = 0
        self._round_t0 = 0.0
        self._last_line = 0.0
        self._status = ""

    def eta(self) -> float | None:
        """Seconds left: from the rounds done, or within the first round from the parties done."""
        elapsed = time.perf_counter() - self._t0
        rounds_done = (self._round - self._first) + (self._done / self._sampled if self._sampled else 0.0)
        if rounds_done <= 0:
            return None
        return elapsed / rounds_done * (self._rounds - self._first + 1 - rounds_done)

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self._t0 = time.perf_counter()
            self._first, self._rounds = event.start_round, event.rounds
            self._round = event.start_round
            if self.live:
                from rich.console import Console
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

                self._progress = Progress(
                    TextColumn(f"[bold]{self.title}[/] round {{task.fields[round]}}/{event.rounds}"), BarColumn(),
                    TextColumn("{task.fields[parties]}"), TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                    TextColumn("ETA {task.fields[eta]}"), console=Console(file=self.stream), transient=False)
                self._progress.start()
                self._task = self._progress.add_task("run", total=event.rounds - event.start_round + 1, completed=0,
                                                     round=event.start_round, parties="", status="", eta="…")
        elif isinstance(event, RoundStarted):
            self._round, self._sampled, self._done = event.round, len(event.parties), 0
            self._round_t0 = time.perf_counter()
            self._refresh()
        elif isinstance(event, PartyReplied):
            if event.round == self._round and event.kind == "fit":
                self._done += 1
            if event.failure:
                self._say(f"party {event.party_id} failed in round {event.round}: {event.failure}")
            self._refresh()
        elif isinstance(event, RoundCompleted):
            r = event.record
            m = self.metric
            status = f"{m} {_fmt(r.get(m))} loss {_fmt(r.get('loss'))}"
            if r.get("epsilon") is not None:
                status += f" ε {r['epsilon']:.2f}"
            if r.get("parties_failed"):
                status += f" failed {len(r['parties_failed'])}"
            self._status = status
            self._round, self._done, self._sampled = event.round + 1, 0, 0
            if self._progress is not None:
                eta = self.eta()
                self._progress.update(self._task, completed=event.round - self._first + 1, round=event.round,
                                      status=status, parties="", eta="…" if eta is None else _duration(eta))
            else:
                elapsed = time.perf_counter() - self._t0
                eta = self.eta()
                print(f"round {event.round}/{self._rounds}  {status}  {r.get('seconds', 0):.1f}s  "
                      f"elapsed {_duration(elapsed)}  ETA {'…' if eta is None else _duration(eta)}",
                      file=self.stream, flush=True)
        elif isinstance(event, RunCompleted) and self._progress is not None:
            self._progress.stop()
            self._progress = None

    def _refresh(self) -> None:
        eta = self.eta()
        eta_text = "…" if eta is None else _duration(eta)
        parties = f"parties {self._done}/{self._sampled}" if self._sampled else ""
        if self._progress is not None:
            done = self._round - self._first + (self._done / self._sampled if self._sampled else 0.0)
            self._progress.update(self._task, completed=done, round=self._round, parties=parties, eta=eta_text)
            return
        now = time.perf_counter()
        if self._sampled and now - self._round_t0 > PLAIN_PARTY_LINE_SECONDS and now - self._last_line > PLAIN_PARTY_LINE_SECONDS:
            self._last_line = now
            print(f"  round {self._round}: {parties} replied  ETA {eta_text}", file=self.stream, flush=True)

    def _say(self, text: str) -> None:
        if self._progress is not None:
            from rich.markup import escape

            self._progress.console.print(f"[yellow]{escape(text)}[/]", highlight=False, markup=True)  # a party's text is not markup
        else:
            print(f"  {text}", file=self.stream, flush=True)
