"""Distributed DP that survives secure aggregation: Skellam noise added inside the ring.

With ``--client-dp distributed --secagg`` every party clips its update (``ClipStep``); the secure
sum (``pollen.privacy.secagg``) then scales it by the round's γ, rounds it stochastically, and adds
its share of integer Skellam noise before masking (``skellam_noise`` in the party's stage 3), so
the sum the coordinator unmasks carries Sk(V) exactly, V = Σ of the shares that arrived. This
step is the noise's server-side owner: it tells the secure sum how much noise the planned parties
must add (``std`` in real units, ``planned`` parties) and accounts each round with the
Skellam RDP of ``pollen.privacy.skellam`` at the γ and the number of parties actually summed
(parties that dropped took their share with them). Agarwal, Kairouz, Liu 2021.

Adaptive clipping under the secure sum (Andrew, Thakkar, McMahan, Ramaswamy, "Differentially
Private Learning with Adaptive Clipping", NeurIPS 2021, arXiv:1905.03871, Section 3, which notes
that the clipped count can be aggregated securely along with the update): each party divides its
clipped update by the round's clip norm C and appends one coordinate, its centred "was not
clipped" bit scaled by s = z_Δ/σ_b, to the vector it quantises, noises and masks. The coordinator
unmasks only the noised sum; the bit coordinate's sum is Σ s·(b − ½) plus the same integer noise
as every coordinate (std z_Δ in units of C), i.e. the count noised with std σ_b. The released
vector has L2 norm at most C' = √(1 + s²/4) (units of C) and noise std z_Δ = z·C' — Andrew et al.'s
correction z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) is exactly what makes it so — and is accounted as one
Skellam release of clip C' over d + 1 coordinates: the count's noise is in the budget, integer,
and survives quantisation with the rest. No party's update or bit leaves it unmasked.

Continuous Gaussian noise added before masking is refused (``pollen.privacy.checks``): it is
rounded into the ring with the update, and a sum of rounded noisy values is not a Gaussian the
accountant covers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pollen.privacy.client_dp import ClipStep, corrected_noise_multiplier
from pollen.privacy.skellam import SkellamAccountant, SkellamRound
from pollen.transforms.base import StepContext, UpdateStep
from pollen.types import Update, is_float

BIT_KEY = "__pollen_clip_bit__"  # the extra coordinate that carries a party's scaled clip bit


@dataclass(frozen=True)
class BitEmbedding:
    """Adaptive clipping's count inside the secure sum, in units of the round's clip norm.

    Attributes:
        z_update: z_Δ, the noise std on the summed normalised updates.
        bit_scale: s = z_Δ/σ_b: the centred bit is sent as s·(b − ½), so the noise on the count is σ_b.
        norm: C' = √(1 + s²/4), the L2 bound of a party's normalised update with its bit.
    """

    z_update: float
    bit_scale: float
    norm: float


def bit_embedding(noise_multiplier: float, count_stddev: float) -> BitEmbedding:
    """The embedding for total noise multiplier z and count noise σ_b (z·C' = z_Δ exactly).

    Raises:
        ConfigError: z ≥ 2σ_b (``corrected_noise_multiplier``).
    """
    z_update = corrected_noise_multiplier(noise_multiplier, count_stddev)
    s = z_update / count_stddev
    return BitEmbedding(z_update, s, math.sqrt(1.0 + s * s / 4.0))


class SkellamNoise(UpdateStep):
    """Party-level DP by integer noise inside a secure sum, with its accountant.

    Args:
        clip: the clip step (the fixed norm C the noise is sized for; with ``clip.adaptive``, the
            round's norm that updates are normalised by, and the count noise σ_b).
        noise_multiplier: z, the std of the summed noise over the released vector's L2 bound.
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
        self.embedding = bit_embedding(self.z, clip.count_stddev) if clip.adaptive else None
        if clip.adaptive:
            clip.secure_count = True  # the count arrives noised inside the secure sum
        self.accountant = SkellamAccountant()

    @property
    def std(self) -> float:
        """Std of the noise on the sum, in the units the parties quantise: z·C (fixed clip), or
        z_Δ (adaptive: updates normalised by the round's clip norm)."""
        return self.embedding.z_update if self.embedding else self.z * self.clip.current

    @property
    def riders(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """The tensor this step adds to the masked vector (the server's reply checks accept it)."""
        return {BIT_KEY: ((1,), np.dtype(np.float64))} if self.embedding else {}

    def coordinate_clip(self, clip: float) -> float:
        """The ring's coordinate range: ``clip``, widened to hold the scaled bit when adaptive."""
        return max(clip, self.embedding.bit_scale / 2) if self.embedding else clip

    def encode(self, update: Update, ctx: StepContext) -> Update:
        """Fixed clip: nothing (the noise is added by the party inside the secure sum, after
        quantisation). Adaptive: the update in units of the round's clip norm, with the clip bit
        as one more coordinate (and the bit taken out of the metrics, which travel in the clear)."""
        if self.embedding is None:
            return update
        c = float(ctx.extra.get("clip_norm", self.clip.current))
        metrics = dict(update.metrics)
        bit = float(metrics.pop("clip_bit", 0.0))
        delta = {k: (v / c).astype(v.dtype, copy=False) if is_float(v) else v for k, v in update.delta.items()}
        delta[BIT_KEY] = np.array([self.embedding.bit_scale * (bit - 0.5)], dtype=np.float64)
        return update.with_(delta=delta, metrics=metrics)

    def unpack(self, update: Update, parties: int) -> Update:
        """Server side, on the unmasked mean of ``parties`` vectors: hand the noised count to the
        clip step and return the mean update in real units (identity with a fixed clip)."""
        if self.embedding is None:
            return update
        delta = dict(update.delta)
        bit = delta.pop(BIT_KEY)
        c = self.clip.used
        self.clip.noised_count(float(bit.reshape(-1)[0]) * parties / self.embedding.bit_scale, parties)
        return update.with_(delta={k: (v * c).astype(v.dtype, copy=False) if is_float(v) else v for k, v in delta.items()})

    def account(self, scale: float, parties: int, dim: int) -> None:
        """Record one released sum: ``parties`` shares of variance (γ·std)²/k each, at scale γ."""
        share = (scale * self.std) ** 2 / self.per_round
        clip = self.embedding.norm if self.embedding else self.clip.current
        self.accountant.step(SkellamRound(self.sample_rate, clip, scale, dim, share * parties))

    def report(self, round: int) -> dict[str, float]:
        eps = self.accountant.get_epsilon(self.delta)
        return {"epsilon_party": eps, **({"epsilon": eps} if self.headline else {})}

    def state_dict(self) -> dict[str, Any]:
        return {"accountant": self.accountant.state_dict()} if self.accountant.history else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "accountant" in state:
            self.accountant.load_state_dict(state["accountant"])
