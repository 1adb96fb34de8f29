"""Party-level differential privacy: clip each party's update, add Gaussian noise, account.

- DP-FedAvg: McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent Language
  Models" (ICLR 2018): clip every update to L2 norm C, average, add N(0, (zC)²) to the sum.
- Adaptive clipping: Andrew, Thakkar, McMahan, Ramaswamy, "Differentially Private Learning with
  Adaptive Clipping" (NeurIPS 2021, arXiv:1905.03871): C follows the γ-quantile of update norms,
  C ← C·exp(−η(b̃ − γ)) with b̃ the noised fraction of unclipped updates, and the update noise is
  lowered to z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) so that both releases together cost one Gaussian of
  multiplier z.

Weighting: under party-level DP every update counts once (``num_examples`` is set to 1 on the
party), so one party moves the mean by at most 2C/m for m updates (replace-one), whatever its data
size. FedAvg's example weights would let a large party dominate the sensitivity.

Accounting: Pollen samples a fixed number k of the N parties per round without replacement, so
central and distributed noise are accounted with the without-replacement RDP bound (Wang et al.
2019) at q = k/N and replace-one sensitivity 2C (noise multiplier z/2 against it). Local noise gets
no amplification: each participation is one Gaussian of multiplier z/2 on the party's own data.

Security: all noise comes from a numpy Generator seeded with 256 bits from ``os.urandom`` for every
draw (not from the run seed). Floating-point Gaussian sampling is not hardened against Mironov's
2012 least-significant-bit attack; see docs/privacy-dp.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from pollen.errors import ConfigError
from pollen.privacy.accountant import RDPAccountant
from pollen.transforms.base import StepContext, UpdateStep
from pollen.types import ModelState, RoundConfig, Update, is_float

PARTICIPATIONS_KEY = "client_dp_participations"  # local DP: rounds this party has noised (its accountant)


def secure_rng() -> np.random.Generator:
    """A Generator freshly seeded with 256 bits from the OS CSPRNG (``os.urandom``)."""
    return np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(32), "little")))


def update_norm(delta: Mapping[str, np.ndarray]) -> float:
    """Global L2 norm over the floating-point tensors of an update (float64 sum)."""
    return math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in delta.values() if is_float(v)))


def clip_update(delta: Mapping[str, np.ndarray], clip_norm: float) -> tuple[ModelState, float]:
    """Scale ``delta`` to L2 norm at most ``clip_norm``; integer buffers become zero (they would
    otherwise leak counts in the clear). An all-zero update stays zero. Returns (clipped, norm)."""
    norm = update_norm(delta)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    out = {k: (v * factor).astype(v.dtype, copy=False) if is_float(v) else np.zeros_like(v) for k, v in delta.items()}
    return out, norm


def add_gaussian(delta: Mapping[str, np.ndarray], std: float, rng: np.random.Generator) -> ModelState:
    """``delta`` + N(0, std²) on every floating-point entry (a new state)."""
    return {k: (v + rng.normal(0.0, std, size=v.shape)).astype(v.dtype) if is_float(v) and std > 0 else v.copy()
            for k, v in delta.items()}


def corrected_noise_multiplier(z: float, count_stddev: float) -> float:
    """Andrew et al. 2019, Section 3: the update noise multiplier z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)
    that leaves the total (updates + clipped-count) at one Gaussian of multiplier z.

    Raises:
        ConfigError: z ≥ 2σ_b (the count would take the whole budget).
    """
    if z <= 0:
        return 0.0
    if z >= 2 * count_stddev:
        raise ConfigError(
            f"adaptive clipping with noise multiplier {z:g} needs a clipped-count noise std above {z / 2:g}, "
            f"got {count_stddev:g}; raise --clip-count-stddev, sample more parties per round, or use a fixed clip norm"
        )
    return (z ** -2 - (2 * count_stddev) ** -2) ** -0.5


class ClipStep(UpdateStep):
    """Clip each party's update to the (fixed or adaptive) clip norm; uniform weights.

    Server side, with ``adaptive``: sends the current clip norm in ``RoundConfig.extra``, reads each
    party's one-bit "was not clipped" report, and moves the clip norm toward the target quantile.

    Args:
        clip_norm: the fixed norm, or the starting one when adaptive.
        adaptive: follow a quantile of update norms (Andrew et al. 2019).
        target_quantile: γ, the fraction of updates that should be under the norm.
        clip_lr: η, the geometric step of the norm.
        count_stddev: σ_b, the noise std added to the count of unclipped updates.
    """

    name = "clip"
    stage = "clip"

    def __init__(self, clip_norm: float, adaptive: bool = False, target_quantile: float = 0.5,
                 clip_lr: float = 0.2, count_stddev: float = 0.0) -> None:
        self.current = float(clip_norm)  # server side: the norm the next round uses
        self.used = float(clip_norm)  # server side: the norm of the round in progress
        self.adaptive = adaptive
        self.target_quantile = target_quantile
        self.clip_lr = clip_lr
        self.count_stddev = count_stddev
        self.count = 0  # server side: updates decoded this round
        self._bits = 0.0
        # Under a secure sum the bits travel masked inside the updates and the count arrives noised
        # (``noised_count``; pollen.privacy.distributed): no bit is read in clear, no noise added here.
        self.secure_count = False

    def configure(self, config: RoundConfig) -> RoundConfig:
        self.used, self.count, self._bits = self.current, 0, 0.0
        return config.with_(extra={**config.extra, "clip_norm": self.current})

    def encode(self, update: Update, ctx: StepContext) -> Update:
        c = float(ctx.extra.get("clip_norm", self.current))
        delta, norm = clip_update(update.delta, c)
        metrics = {k: v for k, v in update.metrics.items()}
        if self.adaptive:
            metrics["clip_bit"] = 1.0 if norm <= c else 0.0
        return update.with_(delta=delta, num_examples=1, metrics=metrics)

    def decode(self, update: Update) -> Update:
        self.count += 1
        if not self.adaptive or self.secure_count:
            return update
        metrics = dict(update.metrics)
        self._bits += float(metrics.pop("clip_bit", 0.0)) - 0.5  # centred: sensitivity 1/2
        return update.with_(metrics=metrics)

    def noised_count(self, centred_sum: float, count: int) -> None:
        """Server side, under a secure sum: Σ(b − ½) over ``count`` updates, already noised."""
        self._bits, self.count = float(centred_sum), int(count)

    def after_aggregate(self, delta: ModelState, round: int, num_updates: int) -> ModelState:
        if self.adaptive and self.count > 0:
            noisy = self._bits
            if self.count_stddev > 0 and not self.secure_count:
                noisy += secure_rng().normal(0.0, self.count_stddev)
            unclipped = noisy / self.count + 0.5
            self.current = self.used * math.exp(-self.clip_lr * (unclipped - self.target_quantile))
        return delta

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current} if self.adaptive else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.current = float(state.get("current", self.current))

    def report(self, round: int) -> dict[str, float]:
        return {"clip_norm": self.used}


class GaussianNoiseStep(UpdateStep):
    """Gaussian noise for party-level DP, with its accountant.

    Args:
        clip: the clip step (for the norm in use and the number of updates).
        mode: ``central`` (the coordinator adds N(0, (zC)²) to the sum), ``local`` (each party
            adds N(0, (zC)²) to its own update) or ``distributed`` (each of the k planned parties
            adds N(0, (zC)²/k), so the sum carries the central noise; for secure aggregation).
        noise_multiplier: z, the total noise multiplier (before the adaptive-clipping correction).
        sample_rate: k/N, the parties' sampling rate per round (central, distributed).
        per_round: k, the planned parties per round.
        delta: δ of the reported ε.
        headline: also report the ε as ``epsilon`` (the run's headline privacy figure).
    """

    name = "gaussian"
    stage = "noise"

    def __init__(self, clip: ClipStep, mode: str, noise_multiplier: float, sample_rate: float, per_round: int,
                 delta: float, headline: bool = True) -> None:
        if mode not in ("central", "local", "distributed"):
            raise ConfigError(f"privacy.client_dp: unknown mode {mode!r}; choose off, central, local or distributed")
        self.clip, self.mode, self.z = clip, mode, float(noise_multiplier)
        self.z_update = corrected_noise_multiplier(self.z, clip.count_stddev) if clip.adaptive else self.z
        self.sample_rate, self.per_round, self.delta, self.headline = sample_rate, per_round, delta, headline
        # local DP: each party accounts its own ε and reports it; the coordinator lifts it into the round
        self.party_privacy = frozenset({"epsilon", "epsilon_party"}) if mode == "local" else frozenset()
        self.accountant = RDPAccountant("without_replacement")  # server side (central, distributed)

    def _std(self, clip_norm: float) -> float:
        std = self.z_update * clip_norm
        return std / math.sqrt(self.per_round) if self.mode == "distributed" else std

    def encode(self, update: Update, ctx: StepContext) -> Update:
        if self.mode == "central":
            return update
        c = float(ctx.extra.get("clip_norm", self.clip.current))
        delta = add_gaussian(update.delta, self._std(c), secure_rng())
        metrics = dict(update.metrics)
        if self.mode == "local":
            key = PARTICIPATIONS_KEY
            ctx.party_state[key] = ctx.party_state.get(key, 0) + 1
            acc = RDPAccountant("poisson")
            acc.step(self.z / 2, 1.0, ctx.party_state[key])  # replace-one sensitivity 2C, no amplification
            metrics["epsilon_party"] = acc.get_epsilon(self.delta)
            if self.headline:
                metrics["epsilon"] = metrics["epsilon_party"]
        return update.with_(delta=delta, metrics=metrics)

    def after_aggregate(self, delta: ModelState, round: int, num_updates: int) -> ModelState:
        m = self.clip.count or num_updates
        if self.mode == "central":
            # N(0, (z C)²) on the sum = N(0, (z C / m)²) on the mean of m updates.
            delta = add_gaussian(delta, self._std(self.clip.used) / max(m, 1), secure_rng())
            self.accountant.step(self.z / 2, self.sample_rate)
        elif self.mode == "distributed":
            # Parties that dropped took their share of the noise with them: the sum carries
            # z·sqrt(m/k) C, so this round is accounted at that multiplier.
            self.accountant.step(self.z * math.sqrt(min(m, self.per_round) / self.per_round) / 2, self.sample_rate)
        return delta

    def state_dict(self) -> dict[str, Any]:
        return {"accountant": [list(h) for h in self.accountant.history]} if self.accountant.history else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.accountant.history = [(float(z), float(q), int(n)) for z, q, n in state.get("accountant", [])]

    def report(self, round: int) -> dict[str, float]:
        if self.mode == "local":
            return {}
        eps = self.accountant.get_epsilon(self.delta)
        return {"epsilon_party": eps, **({"epsilon": eps} if self.headline else {})}
