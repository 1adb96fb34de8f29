"""What the dashboard shows, read from run folders (``runs/<name>/``) and, for runs going on in
this process, from their live feed (``pollen.telemetry.live.LiveRun``).

Only run-level results are read: configs, per-round records, metrics, counts and the global
models. Nothing here reads a party's data or its updates.
"""

from __future__ import annotations

import json
import threading
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pollen.errors import RunError
from pollen.telemetry.history import party_metric, read_history
from pollen.telemetry.report import primary_of, summarize

RECENT_SECONDS = 300.0  # a folder without summary.json whose history changed this recently is running


class RunsIndex:
    """The runs of one folder, plus the live ones of this process.

    Args:
        runs_dir: the folder holding run folders.
        live: run name → its ``LiveRun`` (runs going on in this process).
        controls: run name → its ``Control`` (runs this process may steer).
    """

    def __init__(self, runs_dir: str | Path, live: Mapping[str, Any] | None = None,
                 controls: Mapping[str, Any] | None = None) -> None:
        self.runs_dir = Path(runs_dir)
        self.live: dict[str, Any] = dict(live or {})
        self.controls: dict[str, Any] = dict(controls or {})
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[float, int], list[dict[str, Any]]]] = {}

    def add_live(self, name: str, live: Any, control: Any = None) -> None:
        """Show a run going on in this process (and let the API steer it when ``control`` is given)."""
        with self._lock:
            self.live[name] = live
            if control is not None:
                self.controls[name] = control

    # ------------------------------------------------------------ lookup
    def names(self) -> list[str]:
        """Run folders (those with a config.toml or history.jsonl) and live runs, newest first."""
        found: dict[str, float] = {}
        if self.runs_dir.is_dir():
            for d in self.runs_dir.iterdir():
                if d.is_dir() and ((d / "config.toml").exists() or (d / "history.jsonl").exists()):
                    found[d.name] = (d / "config.toml").stat().st_mtime if (d / "config.toml").exists() else 0.0
        with self._lock:
            for name, live in self.live.items():
                found.setdefault(name, live.started)
        return sorted(found, key=lambda n: -found[n])

    def folder(self, name: str) -> Path:
        """The folder of run ``name``.

        Raises:
            RunError: no such run (names are looked up, never joined as paths from the request).
        """
        with self._lock:
            live = self.live.get(name)
        if live is not None and live.path:
            return Path(live.path)
        if name in self.names():
            return self.runs_dir / name
        raise RunError(f"no run named {name!r}")

    def _live(self, name: str) -> Any:
        with self._lock:
            return self.live.get(name)

    # ------------------------------------------------------------ reading
    def history(self, name: str, after: int = 0) -> list[dict[str, Any]]:
        """Round records after round ``after``."""
        live = self._live(name)
        if live is not None and live.path:
            return live.rounds(after)
        path = self.folder(name) / "history.jsonl"
        if not path.exists():
            return []
        st = path.stat()
        key = (st.st_mtime, st.st_size)
        cached = self._cache.get(name)
        if cached is None or cached[0] != key:
            cached = (key, read_history(path))
            self._cache[name] = cached
        return [r for r in cached[1] if r.get("round", 0) > after]

    def config(self, name: str) -> dict[str, Any]:
        live = self._live(name)
        if live is not None and live.config:
            return live.config
        p = self.folder(name) / "config.toml"
        return tomllib.loads(p.read_text()) if p.exists() else {}

    def summary_json(self, name: str) -> dict[str, Any]:
        p = self.folder(name) / "summary.json"
        try:
            return json.loads(p.read_text()) if p.exists() else {}
        except json.JSONDecodeError:
            return {}

    def control_log(self, name: str) -> list[dict[str, Any]]:
        live = self._live(name)
        if live is not None and live.path:
            return live.control_log()
        p = self.folder(name) / "control.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def status(self, name: str) -> str:
        """running, paused, pausing, stopping, finished, stopped or incomplete."""
        control = self.controls.get(name)
        live = self._live(name)
        if control is not None and live is not None and live.state in ("running", "starting"):
            state = control.status()["state"]
            return "running" if state == "finished" else state
        if live is not None and live.state != "finished":
            return live.state
        folder = self.folder(name)
        stopped = any(e.get("command") == "stop" for e in self.control_log(name))
        if (folder / "summary.json").exists() or (live is not None and live.state == "finished"):
            return "stopped" if stopped else "finished"
        hist = folder / "history.jsonl"
        recent = hist.exists() and time.time() - hist.stat().st_mtime < RECENT_SECONDS
        return "running" if recent else "incomplete"

    def row(self, name: str) -> dict[str, Any]:
        """One line of the runs page: status, app/dataset, strategy, protections, best primary
        metric, rounds and duration."""
        cfg, history, summary = self.config(name), self.history(name), self.summary_json(name)
        s = summarize(cfg, history, summary)
        key, higher = primary_of(summary)
        live = self._live(name)
        planned = cfg.get("federation", {}).get("rounds")
        started = live.started if live is not None else _mtime(self.folder(name) / "config.toml")
        return {"name": name, "status": self.status(name), "dataset": s["dataset"], "strategy": s["method"],
                "protections": protections(cfg), "epsilon": s["epsilon"], "metric": key, "higher_is_better": higher,
                "best": s["best"], "best_round": s["best_round"], "final": s["final"], "rounds_done": len(history),
                "rounds": planned, "seconds": s["seconds"], "started": started, "bytes_up": s["bytes_up"],
                "bytes_down": s["bytes_down"], "comm_ratio": s["comm_ratio"], "live": live is not None,
                "controllable": name in self.controls}

    def parties(self, name: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The parties page: live state when the run is in this process, else from its history."""
        live = self._live(name)
        if live is not None:
            return live.parties()[:limit]
        rows: dict[str, dict[str, Any]] = {}
        for rec in self.history(name):
            for pid in rec.get("parties", []):
                r = rows.setdefault(pid, _party_row(pid))
                r.update(rounds=r["rounds"] + 1, last_round=rec.get("round"), state="replied")
            for pid, reason in (rec.get("failures") or {}).items():
                r = rows.setdefault(pid, _party_row(pid))
                r.update(failures=r["failures"] + 1, last_round=rec.get("round"), reason=reason, state="failed")
            for key, values in rec.items():
                if key.startswith("fed_") and key.endswith("_parties") and isinstance(values, dict):
                    for pid, v in values.items():
                        rows.setdefault(pid, _party_row(pid))["metrics"][f"held-out {key[4:-8]}"] = v
        out = sorted(rows.values(), key=lambda r: (0, int(r["id"])) if r["id"].isdigit() else (1, r["id"]))
        return out[:limit]

    def models(self, name: str) -> list[dict[str, Any]]:
        """Model versions: the latest checkpoint that verifies (its round and metrics) and the final model."""
        folder = self.folder(name)
        out = []
        latest = _latest_checkpoint(folder)
        if latest is not None:
            rnd, path, meta = latest
            out.append({"file": "checkpoint", "label": f"checkpoint after round {rnd}", "round": rnd,
                        "metrics": _metrics(meta.get("record") or {}), "bytes": path.stat().st_size})
        if (folder / "model.safetensors").exists():
            hist = self.history(name)
            out.append({"file": "final", "label": "final model", "round": hist[-1].get("round") if hist else None,
                        "metrics": _metrics(hist[-1]) if hist else {}, "bytes": (folder / "model.safetensors").stat().st_size})
        return out

    def model_path(self, name: str, which: str) -> Path:
        """The file of a model version (``checkpoint``: the latest that verifies, or ``final``).

        Raises:
            RunError: no such version.
        """
        folder = self.folder(name)
        path: Path | None = None
        if which == "final":
            path = folder / "model.safetensors"
        elif which == "checkpoint":
            latest = _latest_checkpoint(folder)
            path = latest[1] if latest is not None else None
        if path is None or not path.exists():
            raise RunError(f"run {name!r} has no {which!r} model")
        return path


def _latest_checkpoint(folder: Path) -> tuple[int, Path, dict[str, Any]] | None:
    """``(round, model file, meta)`` of the run's newest checkpoint that verifies (None: none)."""
    from pollen.compose import latest_checkpoint

    return latest_checkpoint(folder)


def protections(cfg: Mapping[str, Any]) -> list[str]:
    """The run's protections in a few words (DP, secure aggregation, HE, codec)."""
    p, c = cfg.get("privacy", {}), cfg.get("compression", {})
    out = []
    if p.get("dp_sgd"):
        out.append("DP-SGD")
    if p.get("client_dp", "off") != "off":
        out.append(f"client DP ({p['client_dp']})")
    if p.get("secagg"):
        out.append("SecAgg+")
    if p.get("he"):
        out.append("HE (CKKS)")
    if c.get("codec", "none") != "none":
        out.append(f"codec {c['codec']}")
    return out


def _party_row(pid: str) -> dict[str, Any]:
    return {"id": pid, "state": "?", "rounds": 0, "failures": 0, "last_round": None, "reason": None, "metrics": {},
            "epsilon": None, "bytes_up": None, "bytes_down": None, "last_seen": None}


def _metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """A round record's numbers: the coordinator's, and the parties' (``party_metrics``, read with
    ``party_metric``) where the coordinator has none of that name."""
    keep = {}
    own = record.get("party_metrics")
    names = [*record, *(own if isinstance(own, Mapping) else ())]
    for k in names:
        v = record[k] if k in record else party_metric(record, k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("round", "num_examples"):
            keep.setdefault(k, v)
    return keep


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime if path.exists() else None
