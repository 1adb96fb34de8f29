"""FedProx: Li et al. 2020, "Federated Optimization in Heterogeneous Networks" (MLSys). Each
party minimises its loss plus ``μ/2 · ‖w − w_global‖²``; the server averages as FedAvg.

The proximal term itself lives in ``Trainer.fit`` (it is a property of the local objective); this
strategy only sets ``RoundConfig.proximal_mu``.
"""

from __future__ import annotations

from dataclasses import replace

from pollen.errors import StrategyError
from pollen.strategy.base import ClientConfig, NameFilter, Sampler, ServerOptimizer, Strategy, WeightedMean


def fedprox(sampler: Sampler, client: ClientConfig, mu: float = 0.01, server_lr: float = 1.0) -> Strategy:
    """FedAvg aggregation with the proximal term ``mu`` in every party's objective."""
    if mu < 0:
        raise StrategyError(f"FedProx needs proximal_mu ≥ 0; got {mu}")
    client = replace(client, base=client.base.with_(proximal_mu=mu))
    return Strategy("fedprox", sampler, client, WeightedMean(), ServerOptimizer(server_lr), NameFilter())
