"""FedAvgM: Hsu, Qi & Brown 2019, "Measuring the Effects of Non-Identical Data Distribution for
Federated Visual Classification" (arXiv:1909.06335). FedAvg's averaged delta Δ feeds server-side
heavy-ball momentum::

    v ← β v + Δ
    x ← x + η v

With β = 0 this is FedAvg with server learning rate η (tested). Running statistics (BatchNorm
running mean/var, counters) take the averaged delta as is.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pollen.errors import StrategyError
from pollen.strategy.base import (
    ClientConfig,
    NameFilter,
    Sampler,
    PerTensorServerOptimizer,
    Strategy,
    WeightedMean,
    is_statistic,
)


class ServerMomentum(PerTensorServerOptimizer):
    """Heavy-ball momentum on the server.

    Args:
        lr: server learning rate η.
        beta: momentum β in [0, 1).
    """

    name = "momentum"

    def __init__(self, lr: float = 1.0, beta: float = 0.9) -> None:
        if not 0.0 <= beta < 1.0:
            raise StrategyError(f"server momentum must be in [0, 1); got {beta}")
        super().__init__(lr)
        self.beta = beta

    def init(self, global_state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {f"v/{k}": np.zeros_like(x) for k, x in global_state.items() if not is_statistic(k, x)}

    def update(self, name: str, d: np.ndarray, state: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        v = self.beta * state[f"v/{name}"] + d
        return v, {f"v/{name}": v}


def fedavgm(sampler: Sampler, client: ClientConfig, server_lr: float = 1.0, beta: float = 0.9) -> Strategy:
    """FedAvg with server momentum β."""
    return Strategy("fedavgm", sampler, client, WeightedMean(), ServerMomentum(server_lr, beta), NameFilter())
