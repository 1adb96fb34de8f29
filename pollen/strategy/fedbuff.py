"""FedBuff: Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous Aggregation"
(AISTATS). Up to C parties train at once, each from the model version current when it started;
the server folds every arrival into a buffer weighted by its staleness τ and steps once the
buffer holds K updates::

    Δ̄ ← Δ̄ + s(τᵢ) Δᵢ     for each arrival (τᵢ ≤ τ_max; staler ones are discarded)
    after K arrivals:  x ← x + η_g Δ̄ / K

with s(τ) = 1/√(1 + τ) by default (the paper's choice). The coordinator runs this in
``Coordinator.run_async_round`` over any transport (submit/poll); this module holds the
configuration (``AsyncSpec``) and the aggregation (``StalenessMean``). ``fedasync`` is the case
K = 1 (Xie et al. 2019, see ``fedasync.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from pollen.errors import StrategyError
from pollen.strategy.base import Aggregator, ClientConfig, NameFilter, Sampler, ServerOptimizer, Strategy, is_statistic
from pollen.strategy.fedasync import Staleness
from pollen.types import ModelState, Update, is_float

STALENESS_KEY = "staleness"  # the coordinator writes each arrival's τ into Update.metrics


@dataclass(frozen=True)
class AsyncSpec:
    """How an asynchronous strategy runs.

    Attributes:
        buffer_size: K, arrivals per server step.
        concurrency: C, parties training at once (None: the sampler's parties per round).
        max_staleness: arrivals staler than this many server steps are discarded.
        staleness: the weighting s(τ).
    """

    buffer_size: int = 10
    concurrency: int | None = None
    max_staleness: int = 20
    staleness: Staleness = field(default_factory=Staleness)

    def __post_init__(self) -> None:
        if self.buffer_size < 1:
            raise StrategyError(f"async buffer size K must be ≥ 1; got {self.buffer_size}")
        if self.concurrency is not None and self.concurrency < self.buffer_size:
            raise StrategyError(f"async concurrency C={self.concurrency} is below the buffer size K={self.buffer_size}: "
                                "the buffer could never fill; raise --async-concurrency or lower --async-buffer")
        if self.max_staleness < 0:
            raise StrategyError(f"max staleness must be ≥ 0; got {self.max_staleness}")

    def in_flight(self, sample_size: int) -> int:
        """C for a federation whose sampler picks ``sample_size`` parties per round."""
        return self.concurrency if self.concurrency is not None else max(sample_size, self.buffer_size)


class StalenessMean(Aggregator):
    """Δ̄ = Σᵢ s(τᵢ) Δᵢ / K over the K buffered arrivals (τᵢ from ``metrics["staleness"]``).

    Running statistics (BatchNorm running mean/var, counters) are not pseudo-gradients: a stale
    delta of a running variance, added to a newer model, can make it negative. They take the plain
    mean of the *fresh* arrivals' deltas (τ = 0, relative to the current model, so the result is
    the mean of those parties' statistics) and stay unchanged when no arrival is fresh.
    """

    name = "staleness-mean"
    linear = False  # the weights depend on each arrival's staleness

    def __init__(self, staleness: Staleness) -> None:
        self.staleness = staleness

    def aggregate(self, updates: Sequence[Update]) -> ModelState:
        if not updates:
            raise StrategyError("cannot aggregate an empty buffer")
        taus = [float(u.metrics.get(STALENESS_KEY, 0.0)) for u in updates]
        w = np.array([self.staleness.weight(t) for t in taus])  # (K,)
        k = len(updates)
        fresh = [u for u, t in zip(updates, taus) if t == 0]
        out: ModelState = {}
        for name, v in updates[0].delta.items():
            if is_statistic(name, v):
                mean = sum(u.delta[name] for u in fresh) / len(fresh) if fresh else np.zeros_like(v)
                out[name] = mean.astype(v.dtype) if is_float(v) else np.rint(mean).astype(v.dtype)
            else:
                out[name] = (sum(w[i] * updates[i].delta[name] for i in range(k)) / k).astype(v.dtype)
        return out


def fedbuff(sampler: Sampler, client: ClientConfig, spec: AsyncSpec, server_lr: float = 1.0,
            name: str = "fedbuff") -> Strategy:
    """Buffered asynchronous aggregation (``spec.buffer_size`` = 1 gives FedAsync)."""
    return Strategy(name, sampler, client, StalenessMean(spec.staleness), ServerOptimizer(server_lr), NameFilter(),
                    asynchronous=spec)
