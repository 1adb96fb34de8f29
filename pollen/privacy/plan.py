"""From ``cfg.privacy`` to the pieces a run needs: the party-level DP steps, and the DP-SGD
settings sent to parties in ``RoundConfig.extra``. Noise for a target ε is calibrated here for
the whole planned run (every round, and the most any party is sampled)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from pollen.privacy.accountant import noise_multiplier_for, smallest_noise
from pollen.privacy.client_dp import ClipStep, GaussianNoiseStep
from pollen.strategy.registry import sampler_from_config
from pollen.transforms.base import UpdateStep


@dataclass(frozen=True)
class SamplingPlan:
    """How parties are drawn over the planned run.

    Attributes:
        parties: N, parties that exist.
        per_round: k, parties trained per round.
        rounds: planned rounds.
        max_participations: the most rounds any one party is sampled for.
    """

    parties: int
    per_round: int
    rounds: int
    max_participations: int

    @property
    def sample_rate(self) -> float:
        """k / N."""
        return self.per_round / self.parties


def sampling_plan(cfg) -> SamplingPlan:
    """Replay the run's sampler over the planned rounds (all parties available)."""
    f, n = cfg.federation, cfg.data.parties
    sampler = sampler_from_config(cfg)
    ids = [str(i) for i in range(n)]
    k = sampler.sample_size(n)
    if k == n:
        return SamplingPlan(n, k, f.rounds, f.rounds)
    counts: Counter[str] = Counter()
    for r in range(1, f.rounds + 1):
        counts.update(sampler.select(r, ids))
    return SamplingPlan(n, k, f.rounds, max(counts.values()))


def client_noise(cfg) -> str:
    """The party-level noise in use: ``skellam`` for distributed noise under --secagg (the default
    there), else what ``--client-dp-noise`` says (``gaussian`` by default)."""
    p = cfg.privacy
    if p.client_dp_noise is not None:
        return p.client_dp_noise
    return "skellam" if p.client_dp == "distributed" and p.secagg else "gaussian"


SKELLAM_DIM_BOUND = 10**8  # calibration's bound on the summed coordinates (only the rounding term uses it)


def client_noise_multiplier(cfg, plan: SamplingPlan) -> float:
    """z for party-level DP: the configured one, or the smallest meeting ``target_epsilon``."""
    p = cfg.privacy
    if p.client_noise_multiplier is not None:
        return p.client_noise_multiplier
    if p.client_dp == "local":  # no amplification: the most-sampled party's participations
        half = noise_multiplier_for(p.target_epsilon, p.delta, 1.0, plan.max_participations)
    elif p.client_dp == "ftrl":
        from pollen.privacy.ftrl import ftrl_epsilon

        per_epoch = ftrl_rounds_per_epoch(plan)
        return smallest_noise(lambda z: ftrl_epsilon(z, plan.rounds, per_epoch, p.delta), p.target_epsilon,
                              f"{plan.rounds} rounds of DP-FTRL")
    elif client_noise(cfg) == "skellam":
        from pollen.privacy.skellam import field_scale, skellam_epsilon

        def eps(z: float) -> float:
            if p.adaptive_clip:  # normalised updates + the clip bit: clip C', noise z·C' = z_Δ (distributed.py)
                from pollen.privacy.distributed import bit_embedding

                sigma_b = count_stddev(cfg, plan)
                if z >= 2 * sigma_b:
                    return math.inf  # no correction exists: the count alone would spend the budget
                e = bit_embedding(z, sigma_b)
                coord = max(secagg_coordinate_clip(cfg), e.bit_scale / 2)
                scale = field_scale(p.secagg_bits, coord, plan.per_round, e.z_update)
                return skellam_epsilon(z, plan.sample_rate, plan.rounds, p.delta, e.norm, scale, SKELLAM_DIM_BOUND)
            scale = field_scale(p.secagg_bits, secagg_coordinate_clip(cfg), plan.per_round, z * p.clip_norm)
            return skellam_epsilon(z, plan.sample_rate, plan.rounds, p.delta, p.clip_norm, scale, SKELLAM_DIM_BOUND)

        return smallest_noise(eps, p.target_epsilon, f"{plan.rounds} rounds of Skellam noise")
    else:
        half = noise_multiplier_for(p.target_epsilon, p.delta, plan.sample_rate, plan.rounds,
                                    sampling="without_replacement")
    return 2 * half  # accounted against replace-one sensitivity 2C


def ftrl_rounds_per_epoch(plan: SamplingPlan) -> int:
    """N/k: the rounds in which the balanced sampler trains every party once (a tree's leaves)."""
    return max(1, plan.parties // plan.per_round)


def secagg_coordinate_clip(cfg) -> float:
    """The secure sum's coordinate range: under party-level DP no coordinate of an update clipped to
    L2 norm C exceeds C, so the ring's resolution is spent on [−C, C]; with adaptive clipping under
    Skellam noise updates are sent in units of the round's C, so on [−1, 1] (the clip bit's
    coordinate may widen it: ``SkellamNoise.coordinate_clip``)."""
    p = cfg.privacy
    if p.client_dp != "off" and not p.adaptive_clip:
        return min(p.secagg_clip, p.clip_norm)
    if p.client_dp != "off" and client_noise(cfg) == "skellam":
        return min(p.secagg_clip, 1.0)
    return p.secagg_clip


def count_stddev(cfg, plan: SamplingPlan) -> float:
    """σ_b, adaptive clipping's noise std on the count of unclipped updates (default k/20)."""
    p = cfg.privacy
    return p.clip_count_stddev if p.clip_count_stddev is not None else plan.per_round / 20


def client_dp_steps(cfg) -> list[UpdateStep]:
    """Clip + noise for ``--client-dp central|local|distributed|ftrl`` (nothing when off)."""
    p = cfg.privacy
    if p.client_dp == "off":
        return []
    plan = sampling_plan(cfg)
    clip = ClipStep(p.clip_norm, p.adaptive_clip, p.target_quantile, p.clip_lr, count_stddev(cfg, plan))
    z = client_noise_multiplier(cfg, plan)
    if p.client_dp == "ftrl":
        from pollen.privacy.ftrl import TreeAggregationNoise

        return [clip, TreeAggregationNoise(clip, z, plan.per_round, ftrl_rounds_per_epoch(plan), p.delta)]
    if client_noise(cfg) == "skellam":
        from pollen.privacy.distributed import SkellamNoise

        return [clip, SkellamNoise(clip, z, plan.sample_rate, plan.per_round, p.delta)]
    return [clip, GaussianNoiseStep(clip, p.client_dp, z, plan.sample_rate, plan.per_round, p.delta)]


def dp_sgd_extra(cfg) -> dict[str, Any]:
    """What parties need for DP-SGD (``RoundConfig.extra["dp_sgd"]``), or nothing when off."""
    p = cfg.privacy
    if not p.dp_sgd:
        return {}
    plan = sampling_plan(cfg)
    return {"dp_sgd": {
        "noise_multiplier": p.noise_multiplier, "max_grad_norm": p.max_grad_norm, "sample_rate": p.dp_sample_rate,
        "target_epsilon": p.target_epsilon, "delta": p.delta, "accountant": p.accountant,
        "participations": plan.max_participations, "headline": p.client_dp == "off",
    }}


def accountant_name(cfg) -> str | None:
    """How the run's headline ε is accounted (None without DP), for the history and the report."""
    p = cfg.privacy
    if p.client_dp == "ftrl":
        return "tree aggregation, restarted per epoch (Kairouz et al. 2021)"
    if p.client_dp != "off":
        if client_noise(cfg) == "skellam":
            return "Skellam RDP (Agarwal et al. 2021), parties sampled without replacement"
        if p.client_dp == "local":
            return "RDP, Gaussian per participation (no amplification)"
        return "RDP, parties sampled without replacement (Wang et al. 2019)"
    if p.dp_sgd:
        return f"{p.accountant.upper()}, Poisson-subsampled Gaussian, per party over its rounds"
    return None


def privacy_facts(cfg) -> dict[str, Any]:
    """What every history line says about the run's privacy: the unit, δ and the accountant."""
    p = cfg.privacy
    unit = "party" if p.client_dp != "off" else "record"
    dp = p.dp_sgd or p.client_dp != "off"
    return {"privacy_unit": unit, "delta": p.delta if dp else None, "accountant": accountant_name(cfg)}


class PrivacyFacts(UpdateStep):
    """Puts ``privacy_facts`` on every round's history line (a pass-through step)."""

    name = "privacy"
    stage = "observe"
    linear = True

    def __init__(self, facts: dict[str, Any]) -> None:
        self.facts = facts

    def report(self, round: int) -> dict[str, Any]:
        return dict(self.facts)


def facts_steps(cfg) -> list[UpdateStep]:
    """The ``PrivacyFacts`` step for a run with DP or an audit (nothing otherwise)."""
    p = cfg.privacy
    if not (p.dp_sgd or p.client_dp != "off" or p.audit_canaries > 0):
        return []
    return [PrivacyFacts(privacy_facts(cfg))]
