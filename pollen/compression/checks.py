"""Configuration-time checks: which codecs compose with masking and with differential privacy.

- Secure aggregation / homomorphic encryption reveal only the *sum* of the parties' encoded
  updates. A codec whose decoding is per party (top-k's own indices, per-party scales of int8 /
  QSGD / TernGrad, fp16 bit patterns, pruning masks) cannot be decoded from that sum. The only
  quantisation that composes with masking is the fixed-point quantisation into the finite field
  that the masking step itself performs; every codec here is refused under masking.
- Differential privacy: clipping and noise run before compression (the pipeline's order clip →
  noise → compress → mask is enforced by ``Pipeline``), so a codec only post-processes the
  clipped (and, with local noise, noised) update. Error feedback is refused with clipping: it adds
  what earlier rounds dropped to this round's message, so a party's message is no longer bounded
  by the clip norm that the noise is calibrated to.
"""

from __future__ import annotations

from pollen.errors import ConfigError
from pollen.transforms.base import Pipeline


def check_pipeline(pipeline: Pipeline) -> None:
    """Refuse compression steps that cannot work with the other steps of ``pipeline``.

    Raises:
        ConfigError: a codec under masking or encryption, or error feedback with DP clipping.
    """
    masked = [s.name for s in pipeline.steps if s.stage == "mask"]
    codecs = [s.name for s in pipeline.steps if s.stage == "compress" and not s.linear]
    if masked and codecs:
        raise ConfigError(
            f"--codec/--prune {codecs[0]!r} cannot be used with {masked[0]!r}: the server only sees the sum of "
            "the parties' masked or encrypted updates, and this codec's encoding (its own indices or scales per "
            "party) cannot be decoded from a sum. Masking already quantises each update into its finite field, "
            "the only quantisation that composes with it; use --codec none (--downlink and --autocast are fine)"
        )
    clipped = [s.name for s in pipeline.steps if s.stage == "clip"]
    feedback = [s.name for s in pipeline.steps if getattr(s, "error_feedback", False)]
    if clipped and feedback:
        raise ConfigError(
            f"--error-feedback with {feedback[0]!r} cannot be combined with DP clipping ({clipped[0]!r}): the "
            "residual adds what earlier rounds dropped to this round's message, so it is no longer bounded by the "
            "clip norm the DP noise is calibrated to; turn error feedback off (--no-error-feedback)"
        )
