"""Privacy: client-level DP, DP-SGD, accountants, secure aggregation, homomorphic encryption."""

from __future__ import annotations


def steps_from_config(cfg, where: str) -> list:
    """Update-pipeline steps for ``cfg.privacy``.

    Args:
        where: ``before_compress`` (clip, noise) or ``after_compress`` (mask, encrypt).
    """
    steps: list = []
    if where == "after_compress":
        steps += _he_steps(cfg)
    return steps


def _he_steps(cfg) -> list:
    """The CKKS ``mask`` step when ``--he`` is on (see pollen/privacy/he_step.py)."""
    if not getattr(cfg.privacy, "he", False):
        return []
    from pollen.compression import steps_from_config as compression_steps
    from pollen.errors import ConfigError

    if cfg.privacy.he_keys is None:
        raise ConfigError("--he needs --he-keys DIR; create the keys first with 'pollen keys --out DIR'")
    if compression_steps(cfg):
        raise ConfigError("--he encrypts full-precision updates and cannot follow a compression codec "
                          "(ciphertexts are 8x float32 whatever the codec); turn compression off")
    from pollen.privacy.he_step import CKKSEncrypt

    return [CKKSEncrypt(cfg.privacy.he_keys, decrypt_timeout=cfg.federation.round_timeout)]
