"""Distributed discrete noise for secure aggregation: the Skellam mechanism, and its accountant.

Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated Learning"
(NeurIPS 2021, arXiv:2110.04995). Under secure aggregation the coordinator sees only the sum of
the parties' vectors in Z_{2^bits}; noise meant to protect that sum has to be *in* the ring,
added after quantisation, or rounding and wrap-around act on it in ways no accountant covers.
Each party therefore scales its clipped update by γ (the field's scale), rounds stochastically to
integers and adds integer noise Sk(μ) = Poisson(μ/2) − Poisson(μ/2) (variance μ) per coordinate.
A sum of independent Skellams is a Skellam, so k parties adding variance V/k each leave exactly
Sk with variance V on the sum, whoever adds which share.

Privacy (Corollary 3.6 / 4.1 of the paper, as in google-research/federated
``distributed_dp/accounting_utils.py``): for integer vectors with L1 and L2 sensitivities Δ₁, Δ₂
and total variance V, order α > 1,

    ε(α) ≤ α Δ₂² / (2V) + min( ((2α − 1) Δ₂² + 6 Δ₁) / (4V²),  3 Δ₁ / (2V) ).

Stochastic rounding can grow a vector's norm: ‖round(γx)‖₂ ≤ γ‖x‖₂ + √d always (Theorem 1 of
Kairouz, Liu, Steinke 2021 gives the tighter conditional bound; we use the unconditional one),
and for integer vectors ‖v‖₁ ≤ min(√d ‖v‖₂, ‖v‖₂²). Parties are sampled without replacement, so
a round is amplified with the general bound of Wang, Balle, Kasiviswanathan (AISTATS 2019,
Theorem 9), in ``pollen.privacy.rdp.rdp_without_replacement_general``; replace-one adjacency
doubles both sensitivities, as for Pollen's Gaussian party-level DP.

Noise comes from a numpy Generator seeded with 256 bits of ``os.urandom`` for every draw; the
outputs are integers, so the floating-point attack on Gaussian samplers (Mironov 2012) does not
apply to the released values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from pollen.privacy.rdp import INTEGER_ORDERS, rdp_to_epsilon, rdp_without_replacement_general

TAIL_STDS = 12.0  # the ring keeps room for this many standard deviations of the summed noise


def skellam_noise(shape: int | Sequence[int], variance: float, rng: np.random.Generator) -> np.ndarray:
    """Integer noise Sk(variance/2, variance/2): Poisson(μ/2) − Poisson(μ/2), variance ``variance``."""
    if variance <= 0:
        return np.zeros(shape, dtype=np.int64)
    lam = variance / 2.0
    return rng.poisson(lam, shape).astype(np.int64) - rng.poisson(lam, shape).astype(np.int64)


def skellam_rdp(order: float, l1: float, l2: float, variance: float) -> float:
    """RDP at ``order`` of the Skellam mechanism on integer vectors (Agarwal et al. 2021).

    Args:
        order: α > 1.
        l1: L1 sensitivity Δ₁ (integer units).
        l2: L2 sensitivity Δ₂ (integer units).
        variance: V, the total noise variance per coordinate (integer units).
    """
    if variance <= 0:
        return math.inf
    a, v = float(order), float(variance)
    return a * l2 * l2 / (2 * v) + min(((2 * a - 1) * l2 * l2 + 6 * l1) / (4 * v * v), 3 * l1 / (2 * v))


def rounded_l2(l2: float, dim: int) -> float:
    """Largest L2 norm of a vector of norm ``l2`` after stochastic rounding to integers: l2 + √d."""
    return l2 + math.sqrt(dim)


def integer_l1(l2: float, dim: int) -> float:
    """L1 bound of an integer vector of L2 norm at most ``l2`` in ``dim`` dimensions."""
    return l2 * min(math.sqrt(dim), l2)


@dataclass(frozen=True)
class SkellamRound:
    """One release of a secure sum with Skellam noise, in integer units.

    Attributes:
        sample_rate: q = k/N, the parties' sampling rate (1: no amplification).
        clip: each party's L2 clip norm C (real units).
        scale: γ, integer units per real unit.
        dim: d, coordinates summed.
        variance: V, the variance of the noise on the sum (integer units).
    """

    sample_rate: float
    clip: float
    scale: float
    dim: int
    variance: float

    def sensitivities(self) -> tuple[float, float]:
        """(Δ₁, Δ₂) of one party's replacement: twice one rounded, scaled, clipped update."""
        l2 = rounded_l2(self.clip * self.scale, self.dim)
        return 2 * integer_l1(l2, self.dim), 2 * l2


@lru_cache(maxsize=512)
def _round_rdp(r: SkellamRound, orders: tuple[int, ...]) -> tuple[float, ...]:
    l1, l2 = r.sensitivities()

    def eps(order: int) -> float:
        return skellam_rdp(order, l1, l2, r.variance)

    if r.sample_rate >= 1.0:
        return tuple(eps(a) for a in orders)
    return tuple(min(rdp_without_replacement_general(r.sample_rate, eps, a), eps(a)) for a in orders)


class SkellamAccountant:
    """ε of a sequence of Skellam releases (party-level DP under secure aggregation).

    The interface is the other accountants' (``step``, ``get_epsilon``, ``state_dict``).
    """

    mechanism = "skellam"
    orders: tuple[int, ...] = INTEGER_ORDERS

    def __init__(self) -> None:
        self.history: list[tuple[SkellamRound, int]] = []

    def step(self, release: SkellamRound, count: int = 1) -> None:
        """Record ``count`` releases like ``release``."""
        if self.history and self.history[-1][0] == release:
            self.history[-1] = (release, self.history[-1][1] + count)
        else:
            self.history.append((release, int(count)))

    def rdp(self) -> np.ndarray:
        """Total RDP at each order."""
        total = np.zeros(len(self.orders))
        for release, n in self.history:
            total += np.asarray(_round_rdp(release, self.orders)) * n
        return total

    def get_epsilon(self, delta: float) -> float:
        """ε spent so far at ``delta`` (0 before any release)."""
        if not self.history:
            return 0.0
        return rdp_to_epsilon(self.orders, self.rdp(), delta)[0]

    def state_dict(self) -> dict[str, Any]:
        """Plain, JSON-able state."""
        return {"mechanism": self.mechanism,
                "history": [[r.sample_rate, r.clip, r.scale, r.dim, r.variance, n] for r, n in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``'s output."""
        self.history = [(SkellamRound(float(q), float(c), float(s), int(d), float(v)), int(n))
                        for q, c, s, d, v, n in state.get("history", [])]


def skellam_epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float, clip: float,
                    scale: float, dim: int) -> float:
    """ε after ``rounds`` releases whose summed noise has std ``noise_multiplier · clip`` (real units)."""
    acc = SkellamAccountant()
    acc.step(SkellamRound(sample_rate, clip, scale, dim, (noise_multiplier * clip * scale) ** 2), rounds)
    return acc.get_epsilon(delta)


def field_scale(bits: int, clip: float, parties: int, noise_std: float) -> float:
    """γ for a ring Z_{2^bits}: ``parties`` values in [−clip, clip] plus ``TAIL_STDS`` standard
    deviations of the summed noise (``noise_std``, real units) stay below 2^(bits−1) − 1."""
    limit = 2 ** (bits - 1) - 1
    return limit / (parties * clip + TAIL_STDS * noise_std)


def add_integer_noise(values: np.ndarray, variance: float, rng: np.random.Generator,
                      exact: Sequence[tuple[int, int]] = ()) -> None:
    """Add Skellam noise of ``variance`` in place to ring elements ``values`` (unsigned, wrapping),
    except on the ``exact`` segments (integer buffers summed exactly)."""
    noise = skellam_noise(values.shape, variance, rng)
    for a, b in exact:
        noise[a:b] = 0
    values += noise.astype(values.dtype)  # two's complement: a negative draw wraps as it should
