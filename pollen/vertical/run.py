"""Vertical runs: simulation on one machine, and deployment (a coordinator plus one process per
party over gRPC with mutual TLS), both writing the horizontal runs' folder: ``config.toml``,
``history.jsonl`` (one line per epoch: accuracy, loss, AUC, seconds, bytes up and down),
``summary.json``, ``report.md`` and ``plot.svg``; simulation also writes each party's model part
(``model-<party>.safetensors``), deployed parties write theirs in their own ``--out`` folder.

This module is the vertical runs' composition root: every mode builds its parties with
:func:`build_party` and drives them with :func:`pollen.vertical.driver.run_protocol`.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from pollen.errors import RunError
from pollen.vertical.app import VerticalApp, load_vertical_app
from pollen.vertical.config import VerticalConfig, vertical_config

log = logging.getLogger("pollen.vertical")
RUN_FILES = ("config.toml", "history.jsonl", "summary.json", "report.md", "plot.svg")


@dataclass
class VerticalResult:
    """What a vertical run left behind.

    Attributes:
        run_dir: the run folder.
        history: one record per epoch.
        summary: alignment and totals (summary.json).
        parties: simulation only: the party objects (their model parts, for inspection).
    """

    run_dir: Path
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    parties: dict[str, Any] | None = None


def build_party(cfg: VerticalConfig, app: Any, party_id: str, data_path: str | None = None) -> Any:
    """One party of the run (the guest, a host or the arbiter), reading only its own data."""
    from pollen.vertical.party import VerticalParty

    return VerticalParty(cfg, load_vertical_app(app if app is not None else cfg.app.path), party_id, data_path)


def party_path(cfg: VerticalConfig, party_id: str) -> str | None:
    """A simulated party's data path: ``data_dir`` with ``{party}`` replaced."""
    d = cfg.data.data_dir
    return None if d is None else d.replace("{party}", party_id)


def simulate_vertical(config: Any = None, *, app: Any = None, overwrite: bool = False,
                      callbacks: Sequence[Callable[[Any], None]] = (), **overrides: Any) -> VerticalResult:
    """Run a vertical federation on this machine (every party in this process) and write its run folder.

    ::

        pollen.vertical.simulate_vertical(model="lr", parties=3, epochs=10, name="bc-vlr")

    Args:
        config: a ``VerticalConfig``, nested dict, TOML path or None.
        app: the vertical app (None: ``[app] path``, or the built-in datasets).
        overwrite: replace a run already in the folder.
        callbacks: functions called with each epoch's ``RoundCompleted`` (and the run's other events).
        **overrides: flag-style settings (``epochs=5``, ``parties=3``, ``key_bits=1024``).

    Raises:
        RunError: a party failed (named with its step) or the parties share no id.
    """
    from pollen.transport.inprocess import InProcessTransport
    from pollen.vertical.driver import Exchange, run_protocol

    cfg = vertical_config(config, **overrides)
    loaded = load_vertical_app(app if app is not None else cfg.app.path)
    parties = {pid: build_party(cfg, loaded, pid, party_path(cfg, pid)) for pid in cfg.party_ids}
    folder, events = open_vertical_run(cfg, loaded, overwrite=overwrite, callbacks=callbacks)
    ex = Exchange(InProcessTransport(parties))
    info = _drive(ex, cfg, events)
    for pid, party in parties.items():
        state = party.model_state()
        if state:
            from safetensors.numpy import save_file

            save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(folder / f"model-{pid}.safetensors"))
    summary = finish_vertical_run(folder, cfg, loaded, info, transport="in-process")
    return VerticalResult(folder, _history(folder), summary, parties)


def _drive(ex: Any, cfg: VerticalConfig, events: Any) -> dict[str, Any]:
    from pollen.telemetry.events import RoundCompleted, RunCompleted, RunStarted
    from pollen.vertical.driver import run_protocol

    parties = cfg.party_ids
    events.emit(RunStarted(cfg.vertical.epochs, 1, len(parties)))

    def emit(epoch: int, record: dict[str, Any]) -> None:
        events.emit(RoundCompleted(epoch, {"round": epoch, **record, "parties": parties, "parties_failed": [],
                                           "aggregated": True}))

    info = run_protocol(ex, cfg, emit)
    events.emit(RunCompleted({}))
    return info


def open_vertical_run(cfg: VerticalConfig, app: VerticalApp, kind: str = "", overwrite: bool = False,
                      callbacks: Sequence[Callable[[Any], None]] = ()) -> tuple[Path, Any]:
    """Create the run folder (refusing to replace another run unless ``overwrite``) and its events.

    Raises:
        RunError: the folder holds another run.
    """
    from pollen.config import to_toml
    from pollen.telemetry.events import EventBus
    from pollen.telemetry.history import HistorySink
    from pollen.telemetry.progress import ProgressSink

    what = app.name if app.reference else (cfg.data.dataset or "breast_cancer")
    name = cfg.run.name or f"{what}-vertical-{cfg.vertical.model}{kind}-{datetime.now():%Y%m%d-%H%M%S}"
    path = Path(cfg.run.runs_dir) / name
    taken = [f for f in (*RUN_FILES, *(p.name for p in path.glob("model-*.safetensors"))) if (path / f).exists()]
    if taken and not overwrite:
        raise RunError(f"{path} already holds a run ({', '.join(taken[:3])}); choose another --name or pass --overwrite")
    for f in taken:
        (path / f).unlink()
    path.mkdir(parents=True, exist_ok=True)
    data = cfg.to_dict()
    if cfg.app.path and not Path(cfg.app.path).is_absolute() and cfg.app.path.endswith(".py"):
        data["app"]["path"] = str(Path(cfg.app.path).resolve())
    (path / "config.toml").write_text(to_toml(data))
    bus = EventBus()
    bus.subscribe(HistorySink(path / "history.jsonl"))
    if cfg.run.progress:
        bus.subscribe(ProgressSink(title=f"{path.name} (vertical {cfg.vertical.model})", metric="accuracy"))
    for cb in callbacks:
        bus.subscribe(cb)
    return path, bus


def finish_vertical_run(folder: Path, cfg: VerticalConfig, app: VerticalApp, info: dict[str, Any],
                        transport: str) -> dict[str, Any]:
    """Write summary.json and report.md (+ plot)."""
    from pollen.telemetry.report import write_report

    history = _history(folder)
    epochs = [r for r in history if r.get("seconds") is not None]
    summary = {
        "method": "vertical-lr (Paillier)" if cfg.vertical.model == "lr" else "split learning",
        "app": app.reference, "app_name": app.name if app.reference else (cfg.data.dataset or "breast_cancer"),
        "parties": cfg.vertical.parties, "roles": {p: cfg.role(p) for p in cfg.party_ids},
        "primary_metric": "accuracy", "higher_is_better": True, "metric_names": ["accuracy", "auc"],
        "transport": transport, "key_bits": cfg.vertical.key_bits if cfg.vertical.model == "lr" else None,
        "seconds_per_epoch": float(np.median([r["seconds"] for r in epochs])) if epochs else None,
        "bytes_per_epoch": float(np.median([r["bytes_up"] + r["bytes_down"] for r in epochs])) if epochs else None,
        **info,
    }
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    write_report(folder)
    return summary


def _history(folder: Path) -> list[dict[str, Any]]:
    from pollen.telemetry.history import read_history

    return read_history(folder)


# ------------------------------------------------------------ deployment
def serve_vertical(cfg: VerticalConfig, app: Any = None, overwrite: bool = False) -> VerticalResult:
    """The coordinator of a deployed vertical run: waits for every party over gRPC (mutual TLS
    unless ``network.insecure``), drives the protocol, writes the run folder.

    Raises:
        RunError: not every party joined within ``network.join_timeout``, or a party failed.
    """
    from pollen.transport.rpc.hub import GrpcTransport
    from pollen.transport.rpc.service import FederationService, listen_address, start_server
    from pollen.transport.rpc.tls import RevocationList
    from pollen.vertical.driver import Exchange

    net = cfg.network
    loaded = load_vertical_app(app if app is not None else cfg.app.path)
    folder, events = open_vertical_run(cfg, loaded, kind="-grpc", overwrite=overwrite)
    parties = cfg.party_ids
    hub = GrpcTransport(net.heartbeat_interval, min_parties=len(parties), quorum_timeout=net.join_timeout)
    revoked = net.revoked or str(Path(net.certs_dir) / "revoked.txt")
    service = FederationService(hub, {"vertical": cfg.to_dict()}, int(net.max_message_mb * 1e6), net.insecure,
                                RevocationList(revoked))
    server, port = start_server(service, net.host, net.port, None if net.insecure else net.certs_dir,
                                workers=max(16, 4 * len(parties) + 8))
    print(f"vertical coordinator listening on {listen_address(net.host, port)}; waiting for parties "
          f"{', '.join(parties)} (run directory {folder})", file=sys.stderr, flush=True)
    completed = False
    try:
        if not hub.wait_for_parties(len(parties), net.join_timeout):
            raise RunError(f"only parties {hub.connected()} of {parties} joined within {net.join_timeout} s")
        missing = sorted(set(parties) - set(hub.connected()))
        if missing:
            raise RunError(f"parties {missing} did not join (connected: {hub.connected()}); start them with "
                           "'pollen vertical party --party-id …'")
        info = _drive(Exchange(hub), cfg, events)
        completed = True
    finally:
        if completed:
            hub.close()
            hub.wait_stopped(timeout=5.0)
        server.stop(grace=1.0).wait()
        hub.close()
    summary = finish_vertical_run(folder, cfg, loaded, {**info, "tls": not net.insecure}, transport="grpc")
    return VerticalResult(folder, _history(folder), summary)


def party_builder(app: Any = None) -> Callable[[Any, dict[str, Any]], Any]:
    """How a deployed party builds itself from what the coordinator sent on joining (for
    ``GrpcParty(opts, build=…)``): the coordinator's vertical config, this party's app and data."""
    from pollen.errors import ConfigError
    from pollen.vertical.config import make_vertical_config

    def build(opts: Any, welcome: dict[str, Any]) -> Any:
        if "vertical" not in welcome:
            raise ConfigError("the coordinator runs a horizontal federation; start this party with 'pollen client'")
        cfg = make_vertical_config(welcome["vertical"])
        return build_party(cfg, app if app is not None else opts.app, opts.party_id, opts.data_path)

    return build


def save_party_model(party: Any, out_dir: str | Path) -> Path | None:
    """Write a deployed party's model part to ``out_dir/model-<party>.safetensors``."""
    state = party.model_state()
    if not state:
        return None
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"model-{party.party_id}.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    return path


def remove_run(path: Path) -> None:
    """Delete a run folder (tests, benchmarks)."""
    shutil.rmtree(path, ignore_errors=True)
