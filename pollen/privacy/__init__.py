"""Privacy: client-level DP, DP-SGD, accountants, secure aggregation, homomorphic encryption."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def steps_from_config(cfg, where: str, built: Sequence = ()) -> list:
    """Update-pipeline steps for ``cfg.privacy``.

    Args:
        where: ``before_compress`` (clip, noise) or ``after_compress`` (mask, encrypt).
        built: the steps already in the pipeline (a secure sum finds the distributed noise it
            must add inside its ring there).
    """
    if where not in STEP_CONTRIBUTORS:
        raise ValueError(f"where must be one of {sorted(STEP_CONTRIBUTORS)}, got {where!r}")
    return [step for contribute in STEP_CONTRIBUTORS[where] for step in contribute(cfg, built)]


def _dp_steps(cfg, built: Sequence = ()) -> list:
    """Party-level DP clip + noise when ``--client-dp`` is on (see pollen/privacy/client_dp.py)."""
    from pollen.privacy.plan import client_dp_steps

    return client_dp_steps(cfg)


def _facts_steps(cfg, built: Sequence = ()) -> list:
    """The unit, δ and accountant on every history line of a DP or audited run."""
    from pollen.privacy.plan import facts_steps

    return facts_steps(cfg)


def _he_steps(cfg, built: Sequence = ()) -> list:
    """The CKKS ``mask`` step when ``--he`` is on (see pollen/privacy/he_step.py)."""
    if not getattr(cfg.privacy, "he", False):
        return []
    from pollen.errors import ConfigError

    if getattr(cfg.privacy, "secagg", False):
        raise ConfigError("--he and --secagg both hide single updates; choose one (both reveal only the sum)")
    if cfg.privacy.he_keys is None:
        raise ConfigError("--he needs --he-keys DIR; create the keys first with 'pollen keys --out DIR'")
    from pollen.privacy.he_step import CKKSEncrypt

    return [CKKSEncrypt(cfg.privacy.he_keys, decrypt_timeout=cfg.federation.round_timeout)]


def _secagg_steps(cfg, built: Sequence = ()) -> list:
    """The SecAgg+ ``mask`` step when ``--secagg`` is on (see pollen/privacy/secagg/), with the
    distributed Skellam noise of ``built`` (if any) added by the parties inside its ring."""
    if not getattr(cfg.privacy, "secagg", False):
        return []
    from pollen.privacy.distributed import SkellamNoise
    from pollen.privacy.secagg.config import secagg_step

    return [secagg_step(cfg, next((s for s in built if isinstance(s, SkellamNoise)), None))]


# where -> functions cfg -> steps; each privacy subsystem adds its own contributor here
# (DP: clip/noise before compression; secure aggregation and HE: masking after it).
STEP_CONTRIBUTORS: dict[str, list[Callable[..., list]]] = {
    "before_compress": [_dp_steps, _facts_steps],
    "after_compress": [_he_steps, _secagg_steps],
}
