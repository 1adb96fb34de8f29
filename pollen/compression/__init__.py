"""Update codecs (fp16/bf16, int8, QSGD, TernGrad, top-k with error feedback), client-side
pruning, downlink compression of the global model and mixed-precision local training.

Each codec is an ``UpdateStep`` of stage ``compress``: ``encode`` on the party, ``decode`` on the
server. Encoded tensors travel as numpy arrays named ``<tensor>::<part>`` in ``Update.delta`` with
JSON metadata in ``Update.codec[<codec name>]``. See docs/compression.md.
"""

from __future__ import annotations

from pollen.compression.base import TensorCodec
from pollen.compression.downlink import Autocast, Downlink
from pollen.compression.prune import Prune
from pollen.compression.quantize import HalfPrecision, ScaledSign, UniformQuantizer, int8, qsgd, terngrad
from pollen.compression.sparsify import TopK
from pollen.errors import ConfigError
from pollen.transforms.base import UpdateStep

__all__ = [
    "Autocast", "Downlink", "HalfPrecision", "Prune", "ScaledSign", "TensorCodec", "TopK", "UniformQuantizer",
    "codec_from_config", "int8", "qsgd", "steps_from_config", "terngrad",
]

QSGD_BUCKET = 512  # QSGD's bucket size when --codec-block is 0 (Alistarh et al. 2017 use 512)


def codec_from_config(c) -> UpdateStep | None:
    """The uplink codec ``--codec`` names (None for ``none``).

    Args:
        c: a ``CompressionConfig``.
    """
    ef = c.error_feedback
    if c.codec in ("fp16", "bf16"):
        return HalfPrecision(c.codec, error_feedback=ef)
    if c.codec == "int8":
        return int8(c.codec_block, error_feedback=ef)
    if c.codec == "qsgd":
        return qsgd(c.qsgd_bits, c.codec_block or QSGD_BUCKET, error_feedback=ef)
    if c.codec == "terngrad":
        return terngrad(c.codec_block, c.terngrad_clip, error_feedback=ef)
    if c.codec == "sign":
        return ScaledSign(c.codec_block, error_feedback=ef)
    if c.codec == "topk":
        return TopK(c.topk_fraction, c.topk_values, error_feedback=ef)
    return None


def steps_from_config(cfg) -> list[UpdateStep]:
    """Update-pipeline steps for ``cfg.compression``, in order: autocast, downlink, prune, codec.

    Args:
        cfg: a ``RunConfig``.

    Raises:
        ConfigError: ``--error-feedback`` without a lossy codec.
    """
    c = cfg.compression
    steps: list[UpdateStep] = []
    if c.autocast != "off":
        steps.append(Autocast(c.autocast))
    if c.downlink != "none":
        steps.append(Downlink(c.downlink, c.codec_block))
    if c.prune != "none":
        steps.append(Prune(c.prune, c.prune_fraction, c.topk_values))
    codec = codec_from_config(c)
    if c.error_feedback and codec is None:
        raise ConfigError("--error-feedback needs a lossy codec to feed back; pick one with --codec (e.g. topk)")
    if codec is not None:
        steps.append(codec)
    return steps
