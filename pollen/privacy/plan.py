"""From ``cfg.privacy`` to the pieces a run needs: the party-level DP steps, and the DP-SGD
settings sent to parties in ``RoundConfig.extra``. Noise for a target ε is calibrated here for
the whole planned run (every round, and the most any party is sampled)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from pollen.privacy.accountant import noise_multiplier_for
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


def client_noise_multiplier(cfg, plan: SamplingPlan) -> float:
    """z for party-level DP: the configured one, or the smallest meeting ``target_epsilon``."""
    p = cfg.privacy
    if p.client_noise_multiplier is not None:
        return p.client_noise_multiplier
    if p.client_dp == "local":  # no amplification: the most-sampled party's participations
        half = noise_multiplier_for(p.target_epsilon, p.delta, 1.0, plan.max_participations)
    else:
        half = noise_multiplier_for(p.target_epsilon, p.delta, plan.sample_rate, plan.rounds,
                                    sampling="without_replacement")
    return 2 * half  # accounted against replace-one sensitivity 2C


def client_dp_steps(cfg) -> list[UpdateStep]:
    """Clip + noise for ``--client-dp central|local|distributed`` (nothing when off)."""
    p = cfg.privacy
    if p.client_dp == "off":
        return []
    plan = sampling_plan(cfg)
    count_std = p.clip_count_stddev if p.clip_count_stddev is not None else plan.per_round / 20
    clip = ClipStep(p.clip_norm, p.adaptive_clip, p.target_quantile, p.clip_lr, count_std)
    z = client_noise_multiplier(cfg, plan)
    return [clip, GaussianNoiseStep(clip, p.client_dp, z, plan.sample_rate, plan.per_round, p.delta)]


def dp_sgd_extra(cfg) -> dict[str, Any]:
    """What parties need for DP-SGD (``RoundConfig.extra["dp_sgd"]``), or nothing when off."""
    p = cfg.privacy
    if not p.dp_sgd:
        return {}
    plan = sampling_plan(cfg)
    return {"dp_sgd": {
        "noise_multiplier": p.noise_multiplier, "max_grad_norm": p.max_grad_norm,
        "target_epsilon": p.target_epsilon, "delta": p.delta, "accountant": p.accountant,
        "participations": plan.max_participations, "headline": p.client_dp == "off",
    }}
