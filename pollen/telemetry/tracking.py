"""Experiment tracking: MLflow and TensorBoard as sinks on the event bus (``--track``).

Each logs the resolved config, every round's numeric record (the primary metric, loss, federated
metrics, ε, bytes up and down, seconds) at step = round, control commands, and at the end the
run's summary; MLflow also stores the final model, report and history as artifacts (TensorBoard
has no artifact store: it records the model's path). Both run in a background thread
(:class:`BackgroundSink`), so a slow tracking store never holds up a round.

::

    pollen simulate --track mlflow                      # file store in <runs_dir>/mlruns
    pollen simulate --track mlflow:http://127.0.0.1:5000
    pollen simulate --track tensorboard                 # event files in runs/<name>/tensorboard
    pollen simulate --track tensorboard:tb/             # tensorboard --logdir tb/

Optional extras: ``pip install 'pollen-fl[mlflow]'`` (mlflow-skinny), ``'pollen-fl[tensorboard]'``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pollen.errors import ConfigError, require
from pollen.telemetry.events import ControlApplied, Event, RoundCompleted, RunFinished, RunOpened

log = logging.getLogger("pollen.telemetry")
TRACKERS = ("mlflow", "tensorboard")
ARTIFACTS = ("model.safetensors", "report.md", "history.jsonl", "config.toml", "summary.json", "plot.svg", "control.jsonl")


def numeric(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a round record (lists, dicts, flags and the round itself left out)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "round" and math.isfinite(v)}


def flatten(config: Mapping[str, Any]) -> dict[str, str]:
    """``{"train": {"lr": 0.05}}`` → ``{"train.lr": "0.05"}`` (tracking stores' parameters)."""
    return {f"{section}.{k}": str(v) for section, values in config.items() if isinstance(values, Mapping)
            for k, v in values.items()}


class BackgroundSink:
    """Hands events to ``sink`` in a worker thread, in order; :meth:`close` waits until all are done.

    A sink that raises is logged once and then skipped, like on the bus itself.
    """

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self._queue: queue.Queue[Event | None] = queue.Queue()
        self._broken = False
        self._thread = threading.Thread(target=self._work, name=f"pollen-{type(sink).__name__}", daemon=True)
        self._thread.start()

    def __call__(self, event: Event) -> None:
        self._queue.put(event)

    def _work(self) -> None:
        while (event := self._queue.get()) is not None:
            if self._broken:
                continue
            try:
                self.sink(event)
            except Exception as exc:  # noqa: BLE001 - tracking must never stop the run
                self._broken = True
                log.warning("tracking sink %s failed and is disabled: %s", type(self.sink).__name__, exc)

    def close(self, timeout: float = 60.0) -> None:
        """Deliver what is queued, then stop the worker (and close the sink)."""
        self._queue.put(None)
        self._thread.join(timeout)
        close = getattr(self.sink, "close", None)
        if callable(close):
            close()


class MlflowSink:
    """Logs a run to MLflow through ``MlflowClient`` (thread-safe, no global active run).

    Args:
        uri: the tracking URI (default: a file store in ``<runs_dir>/mlruns``).
        experiment: the MLflow experiment's name.
    """

    def __init__(self, uri: str | None = None, experiment: str = "pollen") -> None:
        require("mlflow", "mlflow", "--track mlflow")
        self.uri, self.experiment = uri, experiment
        self.client: Any = None
        self.run_id: str | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunOpened):
            self._open(event)
        elif self.run_id is None:
            return
        elif isinstance(event, RoundCompleted):
            self._log(numeric(event.record), event.round)
        elif isinstance(event, ControlApplied):
            self.client.set_tag(self.run_id, f"control.{event.round}.{event.command}",
                                json.dumps({"args": event.args, "by": event.by, "at": event.at})[:5000])
        elif isinstance(event, RunFinished):
            folder = Path(event.path)
            for name in ARTIFACTS:
                if (folder / name).is_file():
                    self.client.log_artifact(self.run_id, str(folder / name))
            summary = {f"summary.{k}": v for k, v in numeric(event.summary).items()}
            if summary:
                self._log(summary, None)
            self.client.set_terminated(self.run_id, "FINISHED")
            self.run_id = None

    def _open(self, event: RunOpened) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = self.uri or (Path(event.path).parent / "mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for it; a local store is what we want
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(self.experiment)
        run = self.client.create_run(exp_id, run_name=event.name, tags={"pollen.run_dir": event.path})
        self.run_id = run.info.run_id
        params = [Param(k, v[:6000]) for k, v in flatten(event.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def _log(self, values: Mapping[str, float], step: int | None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step or 0) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def close(self) -> None:
        if self.run_id is not None:  # the run ended without finishing (a crash, Ctrl-C)
            self.client.set_terminated(self.run_id, "KILLED")
            self.run_id = None


class TensorBoardSink:
    """Writes TensorBoard event files: scalars per round (step = round), the config and control
    commands as text.

    Args:
        log_dir: where the event files go (default: ``runs/<name>/tensorboard``).
    """

    def __init__(self, log_dir: str | None = None) -> None:
        require("tensorboard", "tensorboard", "--track tensorboard")
        self.log_dir = log_dir
        self.writer: Any = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunOpened):
            from torch.utils.tensorboard import SummaryWriter

            where = Path(self.log_dir) / event.name if self.log_dir else Path(event.path) / "tensorboard"
            self.writer = SummaryWriter(log_dir=str(where))
            self.writer.add_text("config", "\n".join(f"    {k} = {v}" for k, v in flatten(event.config).items()), 0)
        elif self.writer is None:
            return
        elif isinstance(event, RoundCompleted):
            for k, v in numeric(event.record).items():
                self.writer.add_scalar(k, v, event.round)
        elif isinstance(event, ControlApplied):
            self.writer.add_text("control", f"{event.command} {json.dumps(event.args)} by {event.by}", event.round)
        elif isinstance(event, RunFinished):
            self.writer.add_text("model", str(Path(event.path) / "model.safetensors"), 0)
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def tracking_sinks(specs: list[str] | None) -> list[BackgroundSink]:
    """The sinks ``--track`` asks for: ``mlflow``, ``mlflow:URI``, ``tensorboard``, ``tensorboard:DIR``.

    Raises:
        ConfigError: an unknown tracker.
        MissingExtraError: its package is not installed (names the extra).
    """
    out = []
    for spec in specs or []:
        kind, _, where = spec.partition(":")
        if kind == "mlflow":
            out.append(BackgroundSink(MlflowSink(where or None)))
        elif kind == "tensorboard":
            out.append(BackgroundSink(TensorBoardSink(where or None)))
        else:
            raise ConfigError(f"--track {spec!r}: expected one of {', '.join(TRACKERS)} (e.g. --track mlflow, "
                              "--track mlflow:http://127.0.0.1:5000, --track tensorboard:tb/)")
    return out
