"""Privacy: client-level DP, DP-SGD, accountants, secure aggregation, homomorphic encryption."""

from __future__ import annotations


def steps_from_config(cfg, where: str) -> list:
    """Update-pipeline steps for ``cfg.privacy``.

    Args:
        where: ``before_compress`` (clip, noise) or ``after_compress`` (mask, encrypt).
    """
    return []
