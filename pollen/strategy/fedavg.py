"""FedAvg: McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data" (AISTATS). Example-weighted mean of local deltas, server step of size 1."""

from __future__ import annotations

from pollen.strategy.base import ClientConfig, NameFilter, Sampler, ServerOptimizer, Strategy, WeightedMean


def fedavg(sampler: Sampler, client: ClientConfig, server_lr: float = 1.0) -> Strategy:
    """FedAvg (``server_lr`` ≠ 1 gives FedAvg with a server learning rate)."""
    return Strategy("fedavg", sampler, client, WeightedMean(), ServerOptimizer(server_lr), NameFilter())
