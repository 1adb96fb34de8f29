"""``pollen ui``'s "start a run": a simulation from a config, run in a thread of the dashboard's
process with its live feed and its controls, one at a time (the machine's cores are the run's)."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from pollen.errors import ConfigError, PollenError
from pollen.telemetry.events import Event, RunOpened
from pollen.ui.runs import RunsIndex

log = logging.getLogger("pollen.ui")


class Launcher:
    """Starts simulation runs into ``index``'s folder.

    Args:
        index: the dashboard's runs (the new run is shown there, live, with its controls).
        callbacks: more sinks for every run started (``--track``).
    """

    def __init__(self, index: RunsIndex, callbacks: tuple[Any, ...] = ()) -> None:
        self.index = index
        self.callbacks = callbacks
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.current: str | None = None
        self.errors: dict[str, str] = {}

    def start(self, config: str | dict[str, Any], by: str) -> dict[str, Any]:
        """Validate ``config`` (TOML text or nested sections) and start the run.

        Raises:
            ConfigError: an invalid config, a name already taken, or a run still going on.
        """
        import tomllib

        from pollen.compose import assemble, run_dir_for
        from pollen.config import make_config, merge
        from pollen.server.control import Control
        from pollen.telemetry.live import LiveRun

        if isinstance(config, str):
            try:
                config = tomllib.loads(config)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"not valid TOML: {exc}") from None
        cfg = make_config(merge(config, {"run": {"runs_dir": str(self.index.runs_dir), "progress": False}}))
        assembly = assemble(cfg)  # refuses what cannot work before anything starts
        folder = run_dir_for(assembly.cfg, assembly.app)
        name = folder.name
        if folder.exists() and any(folder.iterdir()):
            raise ConfigError(f"a run named {name!r} exists already; choose another [run] name")
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise ConfigError(f"run {self.current!r} is going on; wait for it or stop it first")
            live, control = LiveRun(), Control(assembly.cfg)
            self.index.add_live(name, live, control)
            live.name, live.path = name, str(folder)
            started = _Started(by)
            self._thread = threading.Thread(target=self._run, args=(assembly, live, control, started, name),
                                            name=f"pollen-run-{name}", daemon=True)
            self.current = name
            self._thread.start()
        return {"run": name, "by": by}

    def _run(self, assembly: Any, live: Any, control: Any, started: Any, name: str) -> None:
        from pollen.simulation.run import simulate

        try:
            simulate(assembly.cfg, callbacks=(started, live, *self.callbacks), control=control)
        except PollenError as exc:
            self.errors[name] = str(exc)
            live.state = "failed"
            log.warning("run %s failed: %s", name, exc)
        except Exception as exc:  # noqa: BLE001 - a failed run must not take the dashboard down
            self.errors[name] = f"{type(exc).__name__}: {exc}"
            live.state = "failed"
            log.exception("run %s failed", name)

    def wait(self, timeout: float | None = None) -> None:
        """Wait for the current run to end (tests)."""
        if self._thread is not None:
            self._thread.join(timeout)


class _Started:
    """Records who started the run in its control log (``control.jsonl``), as its first command."""

    def __init__(self, by: str) -> None:
        self.by, self.at = by, time.time()

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunOpened):
            from pathlib import Path

            entry = {"round": 0, "command": "start", "args": {}, "by": self.by, "at": self.at}
            with (Path(event.path) / "control.jsonl").open("a") as f:
                f.write(json.dumps(entry) + "\n")
