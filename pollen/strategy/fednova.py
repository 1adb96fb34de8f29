"""FedNova: Wang et al. 2020, "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization" (NeurIPS). Parties that take more local steps τᵢ push the average toward
their own objective; FedNova normalises each delta by its party's step count before averaging::

    aᵢ   = τᵢ                                          (plain local SGD)
    aᵢ   = [τᵢ − ρ(1 − ρ^τᵢ)/(1 − ρ)] / (1 − ρ)         (local SGD with momentum ρ)
    Δ    = τ_eff · Σᵢ pᵢ Δᵢ / aᵢ,   τ_eff = Σᵢ pᵢ aᵢ,   pᵢ = nᵢ / Σⱼ nⱼ
    x   ← x + η Δ

Parties report τᵢ as ``metrics["steps"]`` (the Trainer does). With equal τᵢ this is FedAvg.
Running statistics (BatchNorm running mean/var, counters) take the plain example-weighted mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pollen.errors import StrategyError
from pollen.strategy.base import (
    Aggregator,
    ClientConfig,
    NameFilter,
    Sampler,
    ServerOptimizer,
    Strategy,
    WeightedMean,
    is_statistic,
)
from pollen.types import ModelState, Update


def normalizer(steps: float, momentum: float = 0.0) -> float:
    """aᵢ: the ℓ₁ norm of the local-step coefficients of τ = ``steps`` SGD steps with momentum ρ."""
    if momentum == 0.0:
        return float(steps)
    rho = momentum
    return (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)


class NormalizedMean(Aggregator):
    """FedNova's normalised averaging.

    Args:
        momentum: the parties' local SGD momentum ρ (from the run's train section).
    """

    name = "fednova"
    linear = False  # needs each party's step count next to its delta

    def __init__(self, momentum: float = 0.0) -> None:
        self.momentum = momentum

    def aggregate(self, updates: Sequence[Update]) -> ModelState:
        if not updates:
            raise StrategyError("cannot average zero updates")
        missing = [i for i, u in enumerate(updates) if float(u.metrics.get("steps", 0)) <= 0]
        if missing:
            raise StrategyError("FedNova needs each party's local step count in metrics['steps'] (> 0); "
                                f"{len(missing)} update(s) lack it — the standard Trainer reports it")
        n = np.array([u.num_examples for u in updates], dtype=np.float64)
        p = n / n.sum()  # (parties,)
        a = np.array([normalizer(float(u.metrics["steps"]), self.momentum) for u in updates])  # (parties,)
        tau_eff = float(p @ a)
        first = updates[0].delta
        stats = [k for k, v in first.items() if is_statistic(k, v)]
        out: ModelState = {}
        if stats:
            only = [u.with_(delta={k: u.delta[k] for k in stats}) for u in updates]
            out.update(WeightedMean().aggregate(only))
        for k, v in first.items():
            if k in stats:
                continue
            total = sum((p[i] / a[i]) * updates[i].delta[k].astype(np.float64) for i in range(len(updates)))
            out[k] = (tau_eff * total).astype(v.dtype)
        return out


def fednova(sampler: Sampler, client: ClientConfig, server_lr: float = 1.0, momentum: float = 0.0) -> Strategy:
    """FedNova with the parties' local momentum ``momentum``."""
    return Strategy("fednova", sampler, client, NormalizedMean(momentum), ServerOptimizer(server_lr), NameFilter())
