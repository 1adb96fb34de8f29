"""Strategies as compositions: sampler + client config + aggregator + server optimizer + filter."""

from pollen.strategy.base import (
    Aggregator,
    ClientConfig,
    NameFilter,
    Sampler,
    ServerOptimizer,
    Strategy,
    WeightedMean,
)
from pollen.strategy.fedavg import fedavg
from pollen.strategy.registry import available_strategies, build_strategy, register_strategy

__all__ = [
    "Aggregator", "ClientConfig", "NameFilter", "Sampler", "ServerOptimizer", "Strategy", "WeightedMean",
    "available_strategies", "build_strategy", "fedavg", "register_strategy",
]
