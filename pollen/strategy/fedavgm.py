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
    ServerOptimizer,
    Strategy,
    WeightedMean,
    apply_delta,
    is_statistic,
)
from pollen.types import ModelState


class ServerMomentum(ServerOptimizer):
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

    def step(
        self, global_state: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray]
    ) -> tuple[ModelState, dict[str, np.ndarray]]:
        new, out = dict(global_state), dict(state)
        for k, d in delta.items():
            x = global_state[k]
            if is_statistic(k, x):
                new[k] = apply_delta(x, d, 1.0)
                continue
            v = self.beta * state[f"v/{k}"] + d  # (same shape as x)
            out[f"v/{k}"] = v.astype(x.dtype, copy=False)
            new[k] = (x + self.lr * v).astype(x.dtype, copy=False)
        return new, out


def fedavgm(sampler: Sampler, client: ClientConfig, server_lr: float = 1.0, beta: float = 0.9) -> Strategy:
    """FedAvg with server momentum β."""
    return Strategy("fedavgm", sampler, client, WeightedMean(), ServerMomentum(server_lr, beta), NameFilter())
