"""What a malicious party sends instead of its honest update: pure functions on ``ModelState``.

- signflip: −s·Δ (sign flipping, e.g. Karimireddy, He, Jaggi 2021; s = 1 by default).
- gaussian: a random update, every coordinate N(0, σ²) (Blanchard et al. 2017's Gaussian worker).
- labelflip: honest training on flipped labels y → C − 1 − y (Fang, Cao, Jia, Gong 2020).
- alie: Baruch, Baruch, Goldberg 2019, "A Little Is Enough: Circumventing Defenses For Distributed
  Learning" (NeurIPS): every attacker sends μ − z_max·σ, with μ, σ the coordinate-wise mean and
  standard deviation of the benign updates and z_max from the normal CDF:
  s = ⌊n/2 + 1⌋ − f,  z_max = Φ⁻¹((n − s) / n).
- ipm: Xie, Koyejo, Gupta 2020, "Fall of Empires: Breaking Byzantine-tolerant SGD by Inner
  Product Manipulation" (UAI): every attacker sends −ε·μ.
- scaling: boosting (Bhagoji et al. 2019, "Analyzing Federated Learning through an Adversarial
  Lens"; Bagdasaryan et al. 2020 model replacement): the label-flipped update multiplied by s.

Only floating-point tensors are poisoned; integer buffers keep the attacker's own values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np

from pollen.errors import ConfigError
from pollen.types import ModelState, is_float

ATTACKS = ("signflip", "gaussian", "labelflip", "alie", "ipm", "scaling")
#: attacks that need the benign updates of the colluding attackers of the round
COLLUDING = frozenset({"alie", "ipm"})
#: attacks that train on flipped labels
FLIPS_LABELS = frozenset({"labelflip", "scaling"})


def select_malicious(party_ids: Sequence[str], fraction: float, seed: int) -> frozenset[str]:
    """The malicious parties: ``round(fraction · N)`` of all parties, chosen by the run seed.

    ``np.random.default_rng([seed, 0xBAD]).choice`` over the ids sorted as the sampler sorts them.
    """
    ordered = sorted(party_ids, key=lambda p: (0, int(p)) if p.isdigit() else (1, p))
    k = int(round(fraction * len(ordered)))
    if fraction > 0 and k == 0:
        raise ConfigError(f"attack.malicious_fraction={fraction} of {len(ordered)} parties rounds to 0 malicious "
                          f"parties; use at least {1 / len(ordered):.3g}")
    rng = np.random.default_rng([seed, 0xBAD])
    return frozenset(ordered[i] for i in rng.choice(len(ordered), k, replace=False))


def _map_float(delta: Mapping[str, np.ndarray], fn) -> ModelState:
    return {k: (fn(k, v).astype(v.dtype) if is_float(v) else v.copy()) for k, v in delta.items()}


def signflip(delta: Mapping[str, np.ndarray], scale: float = 1.0) -> ModelState:
    """−scale · Δ."""
    return _map_float(delta, lambda k, v: -scale * v)


def scale_update(delta: Mapping[str, np.ndarray], scale: float) -> ModelState:
    """scale · Δ (the boosting step of the scaling attack)."""
    return _map_float(delta, lambda k, v: scale * v)


def gaussian(like: Mapping[str, np.ndarray], sigma: float, rng: np.random.Generator) -> ModelState:
    """A random update shaped like ``like``: every float coordinate drawn from N(0, σ²)."""
    return _map_float(like, lambda k, v: rng.normal(0.0, sigma, size=v.shape))


def flip_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    """y → C − 1 − y (a fixed permutation of the classes)."""
    return (num_classes - 1) - y


def alie_z_max(n: int, f: int) -> float:
    """Baruch et al. 2019: s = ⌊n/2 + 1⌋ − f supporters needed; z_max = Φ⁻¹((n − s)/n).

    Args:
        n: updates aggregated in the round; f: malicious among them (1 ≤ f < n).
    """
    if not 1 <= f < n:
        raise ConfigError(f"ALIE needs 1 ≤ f < n, got n={n}, f={f}")
    s = math.floor(n / 2 + 1) - f
    p = min((n - s) / n, 1 - 1e-6)  # s ≤ 0: attackers already are a majority; cap the quantile
    return NormalDist().inv_cdf(p)


def benign_moments(benign: Sequence[Mapping[str, np.ndarray]]) -> tuple[ModelState, ModelState]:
    """Coordinate-wise mean and (population, ddof = 0) standard deviation of benign float updates."""
    names = [k for k, v in benign[0].items() if is_float(v)]
    mean = {k: np.mean([b[k] for b in benign], axis=0, dtype=np.float64) for k in names}
    std = {k: np.std([b[k] for b in benign], axis=0, dtype=np.float64) for k in names}
    return mean, std


def alie(own: Mapping[str, np.ndarray], benign: Sequence[Mapping[str, np.ndarray]], z: float) -> ModelState:
    """μ − z·σ over the float tensors (μ, σ from ``benign``); ``own`` supplies shapes and integer buffers."""
    mean, std = benign_moments(benign)
    return _map_float(own, lambda k, v: mean[k] - z * std[k])


def ipm(own: Mapping[str, np.ndarray], benign: Sequence[Mapping[str, np.ndarray]], epsilon: float) -> ModelState:
    """−ε·μ over the float tensors (μ the mean of ``benign``)."""
    mean, _ = benign_moments(benign)
    return _map_float(own, lambda k, v: -epsilon * mean[k])
