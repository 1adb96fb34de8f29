"""Pollen: federated learning across parties whose data never leaves them.

The public API is exactly what this module exports (pinned by ``tests/test_public_api.py``).
"""

from pollen.client import LocalParty, Shard, Trainer
from pollen.config import RunConfig, load_toml, make_config
from pollen.data import Dataset, load_dataset, partition
from pollen.errors import (
    ConfigError,
    DataError,
    MissingExtraError,
    ModelError,
    PartyFailure,
    PollenError,
    PrivacyError,
    ProtocolError,
    RunError,
    StrategyError,
    TransportError,
)
from pollen.models import build_model
from pollen.server import Checkpointer, Coordinator
from pollen.simulation import Federation, centralized, simulate
from pollen.strategy import Aggregator, ClientConfig, NameFilter, Sampler, ServerOptimizer, Strategy, WeightedMean
from pollen.transforms import Pipeline, StepContext, UpdateStep
from pollen.transport.base import Transport
from pollen.transport.inprocess import InProcessTransport
from pollen.types import EvalResult, ModelState, Reply, RoundConfig, Task, Update

__version__ = "0.1.0"

__all__ = [
    "Aggregator", "Checkpointer", "ClientConfig", "ConfigError", "Coordinator", "DataError", "Dataset",
    "EvalResult", "Federation", "InProcessTransport", "LocalParty", "MissingExtraError", "ModelError",
    "ModelState", "NameFilter", "PartyFailure", "Pipeline", "PollenError", "PrivacyError", "ProtocolError",
    "Reply", "RoundConfig", "RunConfig", "RunError", "Sampler", "ServerOptimizer", "Shard", "StepContext",
    "Strategy", "StrategyError", "Task", "Trainer", "Transport", "TransportError", "Update", "UpdateStep",
    "WeightedMean", "build_model", "centralized", "load_dataset", "load_toml", "make_config", "partition",
    "simulate", "__version__",
]
