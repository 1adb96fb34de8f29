"""Command-line glue: ``--ui-port`` and ``--track`` for ``pollen simulate`` and ``pollen server``,
and the ``pollen ui`` command. Nothing here runs a federation: it builds the sinks, the control
queue and the dashboard's server, and hands them to the run.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pollen.telemetry.events import Event, RunOpened

DEFAULT_PORT = 8765


def add_watch_flags(p: argparse.ArgumentParser) -> None:
    """The dashboard and tracking flags of a command that runs a federation."""
    g = p.add_argument_group("dashboard, control API and experiment tracking (docs/dashboard.md)")
    g.add_argument("--ui-port", type=int, metavar="PORT",
                   help="serve the web dashboard and its control API on this port (needs pip install 'pollen-fl[ui]')")
    g.add_argument("--ui-host", default="127.0.0.1", metavar="HOST",
                   help="address the dashboard listens on (default: 127.0.0.1, this machine only)")
    g.add_argument("--ui-token-file", metavar="FILE",
                   help="read the API tokens from FILE, or create it with fresh ones (default: print new tokens once)")
    g.add_argument("--ui-keep", action="store_true",
                   help="keep serving the dashboard after the run ends, until Ctrl-C")
    g.add_argument("--track", action="append", metavar="TRACKER[:WHERE]",
                   help="log the run to mlflow[:URI] or tensorboard[:DIR] (repeat for both; extras 'mlflow', 'tensorboard')")


@dataclass
class Watch:
    """What a run gets from the flags: sinks for its bus, a control queue, a transport hook."""

    callbacks: list[Any] = field(default_factory=list)
    control: Any = None
    live: Any = None
    server: Any = None

    def on_start(self, transport: Any) -> None:
        """A deployed coordinator's transport is up: the parties page reads its sessions."""
        if self.live is not None and hasattr(transport, "sessions"):
            self.live.connected = lambda: sessions_of(transport)


def sessions_of(hub: Any) -> dict[str, dict[str, Any]]:
    """``{party: {"alive", "last_seen" (unix time)}}`` from a gRPC transport's sessions."""
    now, mono = time.time(), time.monotonic()
    return {s.party_id: {"alive": s.alive, "last_seen": now - (mono - s.last_seen)} for s in hub.sessions()}


class _Register:
    """Shows the run on the dashboard as soon as its folder is opened (its name is known then)."""

    def __init__(self, index: Any, live: Any, control: Any) -> None:
        self.index, self.live, self.control = index, live, control

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunOpened):
            self.index.add_live(event.name, self.live, self.control)


@contextmanager
def watching(args: argparse.Namespace, cfg: Any, deployed: bool = False) -> Iterator[Watch]:
    """The sinks, control queue and dashboard the flags ask for, torn down when the run ends
    (``deployed``: a coordinator whose parties are whoever connects, not ``0 … N-1``).

    Raises:
        ConfigError: a bad ``--track`` or an unusable port or token file.
        MissingExtraError: the ``ui``, ``mlflow`` or ``tensorboard`` extra is missing.
    """
    from pollen.telemetry.tracking import tracking_sinks

    trackers = tracking_sinks(getattr(args, "track", None))
    watch = Watch(callbacks=list(trackers))
    if getattr(args, "ui_port", None) is not None:
        from pollen.server.control import Control
        from pollen.telemetry.live import LiveRun
        from pollen.ui.api import create_app
        from pollen.ui.runs import RunsIndex

        watch.control, watch.live = Control(cfg), LiveRun(simulated=not deployed)
        index = RunsIndex(cfg.run.runs_dir)
        watch.callbacks = [_Register(index, watch.live, watch.control), watch.live, *trackers]
        watch.server = serve(create_app(index, _tokens(args)), args.ui_host, args.ui_port)
    try:
        yield watch
        if watch.server is not None and getattr(args, "ui_keep", False):
            print(f"run over; the dashboard stays at {watch.server.url} until Ctrl-C", file=sys.stderr, flush=True)
            _block()
    finally:
        for t in trackers:
            t.close()
        if watch.server is not None:
            watch.server.stop()


def _tokens(args: argparse.Namespace) -> Any:
    from pollen.ui.auth import tokens_for

    tokens, line = tokens_for(getattr(args, "ui_token_file", None))
    print(line, file=sys.stderr, flush=True)
    return tokens


def serve(app: Any, host: str, port: int) -> Any:
    """Start the dashboard's server and say where it is."""
    from pollen.ui.server import UiServer

    server = UiServer(app, host, port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"WARNING: the dashboard listens on {host}: plain HTTP, tokens travel in the clear; put it behind "
              "a TLS proxy or keep --ui-host 127.0.0.1", file=sys.stderr, flush=True)
    print(f"dashboard: {server.url} (open it with #token=<read or control token> after the address)",
          file=sys.stderr, flush=True)
    return server


def _block() -> None:
    stop = threading.Event()
    try:
        while not stop.wait(3600):
            pass
    except KeyboardInterrupt:
        pass


# ------------------------------------------------------------ pollen ui
def ui_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs_dir", nargs="?", default="runs", help="folder of run folders (default: runs)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default: {DEFAULT_PORT}; 0: any free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--token-file", metavar="FILE",
                   help="read the API tokens from FILE, or create it with fresh ones (default: print new tokens once)")
    p.add_argument("--track", action="append", metavar="TRACKER[:WHERE]",
                   help="log runs started from the dashboard to mlflow[:URI] or tensorboard[:DIR]")


def ui_cmd(args: argparse.Namespace) -> int:
    from pollen.errors import ConfigError
    from pollen.telemetry.tracking import tracking_sinks
    from pollen.ui.api import create_app
    from pollen.ui.launcher import Launcher
    from pollen.ui.runs import RunsIndex

    runs = Path(args.runs_dir)
    if runs.exists() and not runs.is_dir():
        raise ConfigError(f"{runs} is a file; give the folder that holds your run folders (e.g. runs/)")
    runs.mkdir(parents=True, exist_ok=True)
    index = RunsIndex(runs)
    trackers = tracking_sinks(args.track)
    args.ui_token_file = args.token_file
    app = create_app(index, _tokens(args), Launcher(index, tuple(trackers)))
    server = serve(app, args.host, args.port)
    print(f"serving {len(index.names())} runs from {runs}/; Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        _block()
    finally:
        server.stop()
        for t in trackers:
            t.close()
    return 0
