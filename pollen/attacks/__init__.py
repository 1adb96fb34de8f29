"""Attack simulation for evaluating robust aggregation: malicious parties chosen by the run seed
send poisoned updates (signflip, gaussian, labelflip, alie, ipm, scaling). See docs/robustness.md."""

from __future__ import annotations

from typing import Any

from pollen.attacks.adversary import AttackSpec, Collusion, DataOf, MaliciousTrainer, SampledIn
from pollen.attacks.poison import ATTACKS, alie_z_max, select_malicious
from pollen.errors import ConfigError


def spec_from_config(cfg, num_classes: int) -> AttackSpec | None:
    """The attack ``cfg.attack`` asks for (None when there is none)."""
    a = cfg.attack
    if a.attack == "none" or a.malicious_fraction == 0:
        return None
    if getattr(cfg.privacy, "dp_sgd", False):
        raise ConfigError("attack simulation and privacy.dp_sgd cannot be combined yet: DP-SGD parties train "
                          "outside the attack wrapper, so the attack would silently not happen; drop one of them")
    return AttackSpec(a.attack, scale=a.attack_scale, sigma=a.attack_sigma, epsilon=a.ipm_epsilon, z=a.alie_z,
                      num_classes=num_classes)


def describe_attack(cfg, party_ids: list[str]) -> dict[str, Any]:
    """What was simulated, for the run's summary (empty without an attack)."""
    a = cfg.attack
    if a.attack == "none":
        return {}
    bad = sorted(select_malicious(party_ids, a.malicious_fraction, cfg.run.seed), key=lambda p: (len(p), p))
    return {"attack": {**a.model_dump(), "malicious_parties": bad}}


__all__ = ["ATTACKS", "AttackSpec", "Collusion", "DataOf", "MaliciousTrainer", "SampledIn", "alie_z_max",
           "describe_attack", "select_malicious", "spec_from_config"]
