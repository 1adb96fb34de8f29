"""Distributed DP that survives secure aggregation: Skellam noise added inside the ring.

With ``--client-dp distributed --secagg`` every party clips its update (``ClipStep``); the secure
sum (``pollen.privacy.secagg``) then scales it by the round's γ, rounds it stochastically, and adds
its share of integer Skellam noise before masking (``skellam_noise`` in the party's stage 3), so
the sum the coordinator unmasks carries Sk(V) exactly, V = Σ of the shares that arrived. This
step is the noise's server-side owner: it tells the secure sum how much noise the planned parties
must add (``std`` in real units, ``planned`` parties) and accounts each round with the
Skellam RDP of ``pollen.privacy.skellam`` at the γ and the number of parties actually summed
(parties that dropped took their share with them). Agarwal, Kairouz, Liu 2021.

Continuous Gaussian noise added before masking is refused (``pollen.privacy.checks``): it is
rounded into the ring with the update, and a sum of rounded noisy values is not a Gaussian the
accountant covers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pollen.privacy.client_dp import ClipStep
from pollen.privacy.skellam import SkellamAccountant, SkellamRound
from pollen.transforms.base import StepContext, UpdateStep
from pollen.types import Update


class SkellamNoise(UpdateStep):
    """Party-level DP by integer noise inside a secure sum, with its accountant.

    Args:
        clip: the clip step (the fixed norm C the noise is sized for).
        noise_multiplier: z, the std of the summed noise over C.
        sample_rate: k/N (parties are sampled without replacement).
        per_round: k, the planned parties per round (each adds 1/k of the variance).
        delta: δ of the reported ε.
        headline: also report the ε as ``epsilon``.
    """

    name = "skellam"
    stage = "noise"

    def __init__(self, clip: ClipStep, noise_multiplier: float, sample_rate: float, per_round: int, delta: float,
                 headline: bool = True) -> None:
        self.clip, self.z, self.sample_rate = clip, float(noise_multiplier), float(sample_rate)
        self.per_round, self.delta, self.headline = int(per_round), float(delta), headline
        self.accountant = SkellamAccountant()

    @property
    def std(self) -> float:
        """Std of the noise on the sum, real units: z·C."""
        return self.z * self.clip.current

    def encode(self, update: Update, ctx: StepContext) -> Update:
        return update  # the noise is added by the party inside the secure sum, after quantisation

    def account(self, scale: float, parties: int, dim: int) -> None:
        """Record one released sum: ``parties`` shares of variance (γ·std)²/k each, at scale γ."""
        share = (scale * self.std) ** 2 / self.per_round
        self.accountant.step(SkellamRound(self.sample_rate, self.clip.current, scale, dim, share * parties))

    def report(self, round: int) -> dict[str, float]:
        eps = self.accountant.get_epsilon(self.delta)
        return {"epsilon_party": eps, **({"epsilon": eps} if self.headline else {})}

    def state_dict(self) -> dict[str, Any]:
        return {"accountant": self.accountant.state_dict()} if self.accountant.history else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "accountant" in state:
            self.accountant.load_state_dict(state["accountant"])
