"""Helpers of the dashboard, control API and tracking tests: small digits federations."""

from __future__ import annotations

import importlib
import os
import threading
from pathlib import Path

import pytest


def in_ci() -> bool:
    """CI (``.ci/run`` sets ``POLLEN_CI=1``) installs every extra these tests use: there a missing
    one is a failure, never a silent skip."""
    return bool(os.environ.get("POLLEN_CI") or os.environ.get("CI"))


def need(module: str, extra: str):
    """Import an optional dependency: skip the test without it, but fail in CI."""
    try:
        return importlib.import_module(module)
    except ImportError:
        message = f"needs {module} (pip install 'pollen-fl[{extra}]')"
        if in_ci():
            pytest.fail(message + "; CI installs pollen-fl[dev]", pytrace=False)
        pytest.skip(message, allow_module_level=True)


def lr_app():
    """An app whose own train() reports the learning rate it was given (``train_lr`` in history),
    so a test sees what reached the parties."""
    import torch

    from pollen.models.builtin import dataset
    from pollen.config import make_config

    def model():
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))

    def load_data(ctx):
        return ctx.partition(*_digits())

    def train(model, data, config, ctx):
        x, y = data
        opt = torch.optim.SGD(model.parameters(), lr=config.lr)
        for _ in range(config.epochs):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return {"num_examples": len(y), "lr": config.lr, "epochs": config.epochs}

    def server_data(ctx):
        x, y = _digits()
        return x[:200], y[:200]

    def _digits():
        ds = dataset(make_config({"data": {"dataset": "digits"}}))
        return torch.from_numpy(ds.x_train).float(), torch.from_numpy(ds.y_train).long()

    return {"model": model, "load_data": load_data, "train": train, "server_data": server_data}


class LiveSim:
    """A simulation running in a thread with a control queue and a live feed, served by the API."""

    def __init__(self, runs_dir: Path, name: str, rounds: int, callbacks=(), **overrides) -> None:
        from pollen.compose import assemble
        from pollen.config import make_config
        from pollen.server.control import Control
        from pollen.telemetry.live import LiveRun

        self.cfg = make_config({"data": {"parties": 4}, "federation": {"rounds": rounds},
                                "run": {"name": name, "runs_dir": str(runs_dir), "progress": False},
                                **overrides})
        self.app = lr_app()
        self.cfg = assemble(self.cfg, self.app).cfg
        self.control, self.live = Control(self.cfg), LiveRun()
        self.callbacks = [self.live, *callbacks]
        self.error = None
        self.result = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from pollen.simulation import simulate

        try:
            self.result = simulate(self.cfg, app=self.app, callbacks=self.callbacks, control=self.control)
        except BaseException as exc:  # noqa: BLE001 - reported by join()
            self.error = exc

    def start(self) -> "LiveSim":
        self.thread.start()
        return self

    def join(self) -> None:
        self.thread.join(300)
        assert not self.thread.is_alive(), "the run did not end"
        if self.error is not None:
            raise self.error


READ = {"Authorization": "Bearer " + "r" * 20}
CONTROL = {"Authorization": "Bearer " + "c" * 20}
