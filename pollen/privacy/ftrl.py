"""DP-FTRL as a pipeline step: tree-aggregated noise on the rounds' sums of clipped updates.

Kairouz et al. 2021 (see ``pollen.privacy.tree``). Each round the coordinator has the mean of the
m clipped updates that arrived; it releases ``(Σ clipped) / k`` (k the planned parties per round,
a fixed public denominator) plus the increment of the tree's prefix-sum noise, so that the model
after round t depends on the data only through the noisy prefix sums. The server optimizer
(FedAvgM by default) works on these increments: post-processing. The tree restarts every epoch
of N/k rounds, in which Pollen's balanced sampler trains every party exactly once, and the
accountant (``rdp_tree_restart``) needs nothing about sampling to hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pollen.privacy.client_dp import ClipStep, secure_rng
from pollen.privacy.rdp import DEFAULT_ORDERS, rdp_to_epsilon
from pollen.privacy.tree import TreeNoise, epochs, rdp_tree_restart
from pollen.transforms.base import UpdateStep
from pollen.types import ModelState, is_float


def _gaussian(std: float, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    rng = secure_rng()
    return {k: rng.normal(0.0, std, size=np.shape(v)) for k, v in like.items()}


def ftrl_epsilon(noise_multiplier: float, rounds: int, rounds_per_epoch: int, delta: float) -> float:
    """ε of ``rounds`` rounds of DP-FTRL (tree restarted per epoch), replace-one (sensitivity 2C)."""
    if rounds <= 0:
        return 0.0
    rdp = rdp_tree_restart(noise_multiplier / 2, epochs(rounds, rounds_per_epoch), DEFAULT_ORDERS)
    return rdp_to_epsilon(DEFAULT_ORDERS, rdp, delta)[0]


class TreeAggregationNoise(UpdateStep):
    """DP-FTRL's noise and accountant (central: the coordinator adds it).

    Args:
        clip: the clip step (fixed clip norm C).
        noise_multiplier: z, node noise std over C.
        per_round: k, planned parties per round (the sum's fixed denominator).
        rounds_per_epoch: N/k, the rounds between tree restarts.
        delta: δ of the reported ε.
        headline: also report the ε as ``epsilon``.
    """

    name = "ftrl"
    stage = "noise"

    def __init__(self, clip: ClipStep, noise_multiplier: float, per_round: int, rounds_per_epoch: int, delta: float,
                 headline: bool = True) -> None:
        self.clip, self.z, self.per_round = clip, float(noise_multiplier), int(per_round)
        self.rounds_per_epoch, self.delta, self.headline = int(rounds_per_epoch), float(delta), headline
        self.rounds = 0  # rounds released
        self.tree = TreeNoise(self.z * clip.current / self.per_round, _gaussian)

    def after_aggregate(self, delta: ModelState, round: int, num_updates: int) -> ModelState:
        m = self.clip.count or num_updates
        if self.rounds % self.rounds_per_epoch == 0:
            self.tree.restart()
        self.rounds += 1
        floats = {k: v for k, v in delta.items() if is_float(v)}
        noise = self.tree.next(floats)
        scale = m / self.per_round  # the mean of m updates → Σ / k
        return {k: (v * scale + noise[k]).astype(v.dtype) if k in floats else v for k, v in delta.items()}

    def report(self, round: int) -> dict[str, float]:
        eps = ftrl_epsilon(self.z, self.rounds, self.rounds_per_epoch, self.delta)
        return {"epsilon_party": eps, **({"epsilon": eps} if self.headline else {})}

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds} if self.rounds else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        # The node noises are not checkpointed: a run resumed mid-epoch starts a fresh tree there.
        # Each party is in one of the epoch's two partial trees, each no deeper than a full one, so
        # the accountant's one full tree per epoch still covers it.
        self.rounds = int(state.get("rounds", 0))
        self.tree.restart()
