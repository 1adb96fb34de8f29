"""FedAdam, FedYogi and FedAdagrad: Reddi et al. 2021, "Adaptive Federated Optimization" (ICLR),
Algorithm 2. The averaged delta Δₜ is a pseudo-gradient for an adaptive server optimizer::

    mₜ = β₁ mₜ₋₁ + (1 − β₁) Δₜ
    vₜ = vₜ₋₁ + Δₜ²                                   (FedAdagrad)
    vₜ = vₜ₋₁ − (1 − β₂) Δₜ² sign(vₜ₋₁ − Δₜ²)          (FedYogi)
    vₜ = β₂ vₜ₋₁ + (1 − β₂) Δₜ²                        (FedAdam)
    xₜ₊₁ = xₜ + η mₜ / (√vₜ + τ)

with m₋₁ = 0 and v₋₁ = τ² (the paper asks v₋₁ ≥ τ²) and no bias correction, as in the paper.
Running statistics (BatchNorm running mean/var, counters) take the averaged delta as is.
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

RULES = ("adam", "yogi", "adagrad")


class AdaptiveServerOptimizer(PerTensorServerOptimizer):
    """Reddi et al.'s server optimizers.

    Args:
        rule: ``adam``, ``yogi`` or ``adagrad``.
        lr: server learning rate η.
        beta1: first-moment decay β₁ (used by all three rules).
        beta2: second-moment decay β₂ (adam, yogi).
        tau: adaptivity τ > 0 (larger = closer to SGD with momentum).
    """

    def __init__(self, rule: str, lr: float = 0.01, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3) -> None:
        if rule not in RULES:
            raise StrategyError(f"adaptive rule {rule!r} is unknown; choose one of: {', '.join(RULES)}")
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise StrategyError(f"beta1 and beta2 must be in [0, 1); got {beta1}, {beta2}")
        if tau <= 0:
            raise StrategyError(f"tau must be > 0 (it keeps the step finite where v is 0); got {tau}")
        super().__init__(lr)
        self.name = rule
        self.rule, self.beta1, self.beta2, self.tau = rule, beta1, beta2, tau

    def init(self, global_state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for k, x in global_state.items():
            if not is_statistic(k, x):
                out[f"m/{k}"] = np.zeros_like(x)
                out[f"v/{k}"] = np.full_like(x, self.tau**2)
        return out

    def second_moment(self, v: np.ndarray, d: np.ndarray) -> np.ndarray:
        """vₜ from vₜ₋₁ and Δₜ under this optimizer's rule."""
        d2 = d * d
        if self.rule == "adagrad":
            return v + d2
        if self.rule == "yogi":
            return v - (1 - self.beta2) * d2 * np.sign(v - d2)
        return self.beta2 * v + (1 - self.beta2) * d2

    def update(self, name: str, d: np.ndarray, state: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        m = self.beta1 * state[f"m/{name}"] + (1 - self.beta1) * d
        v = self.second_moment(state[f"v/{name}"], d)
        return m / (np.sqrt(v) + self.tau), {f"m/{name}": m, f"v/{name}": v}


def fedopt(rule: str, sampler: Sampler, client: ClientConfig, server_lr: float = 0.01, beta1: float = 0.9,
           beta2: float = 0.99, tau: float = 1e-3) -> Strategy:
    """``fedadam`` / ``fedyogi`` / ``fedadagrad`` (``rule`` = adam / yogi / adagrad)."""
    opt = AdaptiveServerOptimizer(rule, server_lr, beta1, beta2, tau)
    return Strategy(f"fed{rule}", sampler, client, WeightedMean(), opt, NameFilter())
