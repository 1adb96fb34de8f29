"""The run history: one JSON line per round in ``runs/<name>/history.jsonl``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pollen.errors import RunError
from pollen.telemetry.events import ControlApplied, Event, RoundCompleted


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class HistorySink:
    """Appends each ``RoundCompleted`` record to ``history.jsonl`` and flushes it at once, so a
    crash loses nothing already reported. On resume, lines past the resumed round are dropped.

    Control commands (``ControlApplied``: pause, stop, new settings, a removed party) go into the
    next round's line as ``control`` (who, what, when) and, at once, into ``control.jsonl``.
    """

    def __init__(self, path: str | Path, resume_after: int | None = None,
                 restore: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.control_path = self.path.parent / "control.jsonl"
        self._control: list[dict[str, Any]] = []
        if resume_after is not None:
            keep = [r for r in read_history(self.path) if r.get("round", 0) <= resume_after] if self.path.exists() else []
            if restore and restore.get("round") == resume_after and not any(r.get("round") == resume_after for r in keep):
                keep.append({k: _clean(v) for k, v in restore.items()})  # killed after the checkpoint, before the line
            self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        else:
            self.path.write_text("")
            self.control_path.unlink(missing_ok=True)  # a replaced run's commands are not this run's

    def __call__(self, event: Event) -> None:
        if isinstance(event, ControlApplied):
            entry = {"round": event.round, "command": event.command, "args": event.args, "by": event.by, "at": event.at}
            self._control.append(entry)
            with self.control_path.open("a") as f:
                f.write(json.dumps(entry) + "\n")
        elif isinstance(event, RoundCompleted):
            record = {k: _clean(v) for k, v in event.record.items()}
            if self._control:
                record["control"], self._control = self._control, []
            line = json.dumps(record)
            with self.path.open("a") as f:
                f.write(line + "\n")


def party_metric(record: Mapping[str, Any], name: str) -> Any:
    """A metric the parties reported (their example-weighted mean) from a round record: under
    ``party_metrics``; top-level in runs written before party metrics had their own namespace, and
    for the coordinator's own records (centralized training's ``train_loss``)."""
    own = record.get("party_metrics")
    if isinstance(own, Mapping) and name in own:
        return own[name]
    return record.get(name)


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``history.jsonl`` file (a torn last line is skipped).

    Raises:
        RunError: the file does not exist.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "history.jsonl"
    if not p.exists():
        raise RunError(f"{p} does not exist: is {p.parent} a run directory?")
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
