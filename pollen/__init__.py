"""Pollen: federated learning across parties whose data never leaves them.

The public API is exactly what this module exports (pinned by ``tests/test_public_api.py``).
Names are imported on first use, so ``import pollen`` (and ``pollen --help``) does not load torch.

::

    import pollen
    result = pollen.simulate(app="app.py", parties=3, rounds=10)
    model = pollen.load_model(result.run_dir)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # running
    "simulate": "pollen.simulation", "centralized": "pollen.simulation", "RunResult": "pollen.simulation",
    "RunInterrupted": "pollen.simulation", "load_model": "pollen.export", "export_model": "pollen.export",
    "assemble": "pollen.compose", "Assembly": "pollen.compose",
    # the app
    "App": "pollen.app", "Context": "pollen.app", "load_app": "pollen.app", "AppError": "pollen.app",
    "Metric": "pollen.metrics",
    # configuration
    "RunConfig": "pollen.config", "load_toml": "pollen.config", "make_config": "pollen.config",
    # events offered to callbacks
    "RunStarted": "pollen.telemetry.events", "RoundStarted": "pollen.telemetry.events",
    "PartyReplied": "pollen.telemetry.events", "RoundCompleted": "pollen.telemetry.events",
    "RunCompleted": "pollen.telemetry.events",
    # data
    "Dataset": "pollen.data", "load_dataset": "pollen.data", "partition": "pollen.data", "read_csv": "pollen.data",
    "read_parquet": "pollen.data", "read_tensors": "pollen.data", "ImageFolder": "pollen.data", "Table": "pollen.data",
    # building blocks
    "LocalParty": "pollen.client", "PartyData": "pollen.client", "Shard": "pollen.client", "Trainer": "pollen.client",
    "build_model": "pollen.models", "Checkpointer": "pollen.server", "Coordinator": "pollen.server",
    "Aggregator": "pollen.strategy", "ClientConfig": "pollen.strategy", "NameFilter": "pollen.strategy",
    "Sampler": "pollen.strategy", "ServerOptimizer": "pollen.strategy", "Strategy": "pollen.strategy",
    "WeightedMean": "pollen.strategy", "Pipeline": "pollen.transforms", "StepContext": "pollen.transforms",
    "UpdateStep": "pollen.transforms", "Transport": "pollen.transport.base",
    "InProcessTransport": "pollen.transport.inprocess",
    "EvalResult": "pollen.types", "ModelState": "pollen.types", "Reply": "pollen.types", "RoundConfig": "pollen.types",
    "Task": "pollen.types", "Update": "pollen.types",
    # errors
    "PollenError": "pollen.errors", "ConfigError": "pollen.errors", "DataError": "pollen.errors",
    "ModelError": "pollen.errors", "StrategyError": "pollen.errors", "PrivacyError": "pollen.errors",
    "TransportError": "pollen.errors", "ProtocolError": "pollen.errors", "PartyFailure": "pollen.errors",
    "RunError": "pollen.errors", "MissingExtraError": "pollen.errors",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pollen' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
