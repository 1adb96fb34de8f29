"""Quantising codecs: half precision, int8, QSGD and TernGrad.

- ``fp16`` / ``bf16``: round every value to half precision (2 bytes instead of 4).
- ``int8``: symmetric 8-bit quantisation with one max-abs scale per tensor or per block,
  nearest rounding (error at most scale/254 per value; biased).
- ``qsgd``: Alistarh et al. 2017, "QSGD: Communication-Efficient SGD via Gradient Quantization and
  Encoding" (NeurIPS). Each bucket ``v`` is sent as ``‖v‖₂``, signs and levels ``l ∈ {0 … s}``
  drawn by stochastic rounding of ``s·|v_i|/‖v‖₂``; unbiased, with
  ``E‖Q(v) − v‖² ≤ min(n/s², √n/s)·‖v‖²`` (their Lemma 3.1). ``b`` bits hold ``s = 2^(b−1) − 1``.
- ``sign``: 1-bit scaled sign with a mean-magnitude scale per block (Karimireddy et al. 2019), for
  use with error feedback.
- ``terngrad``: Wen et al. 2017, "TernGrad: Ternary Gradients to Reduce Communication in
  Distributed Deep Learning" (NeurIPS). Each value becomes ``s·sign(v_i)·Bernoulli(|v_i|/s)`` with
  ``s = max|v|``; unbiased; 2 bits per value. Their optional clipping at ``c·σ`` (``c = 2.5``)
  lowers the variance but biases the result. Most ternary levels are zero (a value survives with
  probability ``|v_i|/s``), so TernGrad sends the positions of the non-zero levels (varint gaps)
  and one sign bit each whenever that is smaller than 2 bits a value: the decoded update is the
  same, only its encoding is shorter.

Signed levels ``q ∈ [−s, s]`` travel as ``q + s`` packed ``bits`` to a value (``<name>::q``) with a
float32 scale per block (``<name>::scale``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from pollen.compression.base import TensorCodec
from pollen.compression.packing import (Arrays, blocks, decode_indices, decode_values, encode_indices, encode_values,
                                        pack_bits, unpack_bits)
from pollen.errors import ConfigError, ProtocolError


class HalfPrecision(TensorCodec):
    """fp16 or bf16 (as uint16 bit patterns): relative error at most 2^-11 (fp16, normal range)
    or 2^-8 (bf16) per value; fp16 refuses values beyond ±65504."""

    def __init__(self, kind: str = "fp16", error_feedback: bool = False) -> None:
        super().__init__(error_feedback)
        if kind not in ("fp16", "bf16"):
            raise ConfigError(f"half precision is 'fp16' or 'bf16', got {kind!r}")
        self.name = kind

    def encode_tensor(self, x: np.ndarray, rng: np.random.Generator) -> tuple[Arrays, dict[str, Any]]:
        return encode_values(x, self.name)

    def decode_tensor(self, parts: Arrays, meta: Mapping[str, Any], n: int) -> np.ndarray:
        return decode_values(parts, meta, n)


class UniformQuantizer(TensorCodec):
    """Symmetric quantisation to ``2·levels + 1`` values per block of ``block`` entries.

    Args:
        levels: ``s``, the number of positive levels (127 for int8, 1 for ternary).
        norm: ``max`` (scale = max|v| of the block) or ``l2`` (scale = ‖v‖₂, as QSGD).
        stochastic: stochastic rounding (unbiased) instead of nearest rounding.
        block: entries sharing one scale (0: the whole tensor).
        clip_sigmas: clip at this many standard deviations before quantising (0: off).
        name: the codec name in metadata.
        error_feedback: see ``TensorCodec``.
    """

    def __init__(self, levels: int, norm: str = "max", stochastic: bool = False, block: int = 0,
                 clip_sigmas: float = 0.0, name: str = "uniform", error_feedback: bool = False) -> None:
        super().__init__(error_feedback)
        if not 1 <= levels <= 127:
            raise ConfigError(f"levels must be in 1 … 127, got {levels}")
        if norm not in ("max", "l2"):
            raise ConfigError(f"norm must be 'max' or 'l2', got {norm!r}")
        self.levels, self.norm, self.stochastic = levels, norm, stochastic
        self.block, self.clip_sigmas, self.name = block, clip_sigmas, name
        self.bits = max(1, math.ceil(math.log2(2 * levels + 1)))
        self.unbiased = stochastic and clip_sigmas == 0

    def max_error(self, x: np.ndarray) -> np.ndarray:
        """Per-entry bound on ``|decode(encode(x)) − x|`` (before any clipping)."""
        rows = blocks(np.asarray(x, np.float32).reshape(-1), self.block)
        scale = np.abs(rows).max(axis=1) if self.norm == "max" else np.linalg.norm(rows, axis=1)
        step = scale / self.levels * (1.0 if self.stochastic else 0.5)
        return np.repeat(step, rows.shape[1])[: x.size] * (1 + 1e-6)

    def encode_tensor(self, x: np.ndarray, rng: np.random.Generator) -> tuple[Arrays, dict[str, Any]]:
        if self.clip_sigmas > 0 and x.size > 1:
            c = self.clip_sigmas * float(x.std())
            x = np.clip(x, -c, c)
        rows = blocks(x, self.block)  # (num_blocks, block)
        if self.norm == "max":
            scale = np.abs(rows).max(axis=1)
        else:
            scale = np.linalg.norm(rows, axis=1)
        scale = scale.astype(np.float32)
        safe = np.where(scale > 0, scale, 1.0)[:, None]
        y = np.abs(rows) / safe * self.levels  # in [0, levels]
        if self.stochastic:
            low = np.floor(y)
            level = low + (rng.random(y.shape, dtype=np.float32) < (y - low))
        else:
            level = np.rint(y)
        q = (np.sign(rows) * np.minimum(level, self.levels)).reshape(-1)[: x.size]
        dense = {"q": pack_bits((q + self.levels).astype(np.uint8), self.bits), "scale": scale}
        if self.levels == 1:  # ternary levels are mostly zero: positions of the non-zeros + sign bits
            nz = np.flatnonzero(q)
            index_arrays, index_meta = encode_indices(nz, x.size)
            sparse = {**index_arrays, "sign": np.packbits(q[nz] > 0, bitorder="little"), "scale": scale}
            if sum(a.nbytes for a in sparse.values()) < sum(a.nbytes for a in dense.values()):
                return sparse, index_meta
        return dense, {}

    def decode_tensor(self, parts: Arrays, meta: Mapping[str, Any], n: int) -> np.ndarray:
        if self.levels == 1 and "index" in meta:  # sparse ternary
            nz = decode_indices(parts, dict(meta), n)
            sign = parts.get("sign")
            if sign is None or sign.dtype != np.uint8 or sign.size != (nz.size + 7) // 8:
                raise ProtocolError(f"{self.name}: expected {(nz.size + 7) // 8} bytes of sign bits")
            levels = np.zeros(n, dtype=np.float32)
            levels[nz] = np.unpackbits(sign, count=nz.size, bitorder="little").astype(np.float32) * 2 - 1
            parts = {"q": pack_bits((levels + 1).astype(np.uint8), self.bits), "scale": parts.get("scale")}
        q, scale = parts.get("q"), parts.get("scale")
        if q is None or scale is None or scale.dtype != np.float32 or scale.ndim != 1:
            raise ProtocolError(f"{self.name}: expected arrays 'q' (uint8) and 'scale' (float32)")
        b = n if self.block <= 0 or self.block >= n else self.block
        b = max(b, 1)
        if scale.size != math.ceil(n / b):
            raise ProtocolError(f"{self.name}: {scale.size} scales for {n} values in blocks of {b}")
        levels = unpack_bits(q, self.bits, n).astype(np.float32) - self.levels
        if np.abs(levels).max(initial=0) > self.levels:
            raise ProtocolError(f"{self.name}: a level outside ±{self.levels}")
        per_value = np.repeat(scale, b)[:n]
        return levels * (per_value / self.levels)


class ScaledSign(TensorCodec):
    """1-bit scaled sign: Karimireddy et al. 2019, "Error Feedback Fixes SignSGD and other Gradient
    Compression Schemes" (ICML): each block ``v`` is sent as ``sign(v)`` (1 bit a value) and
    ``‖v‖₁/n`` (float32); biased, meant to run with error feedback.

    Args:
        block: values sharing one scale (0: the whole tensor).
        error_feedback: see ``TensorCodec`` (recommended).
    """

    name = "sign"
    bits = 1

    def __init__(self, block: int = 0, error_feedback: bool = True) -> None:
        super().__init__(error_feedback)
        self.block = block

    def encode_tensor(self, x: np.ndarray, rng: np.random.Generator) -> tuple[Arrays, dict[str, Any]]:
        rows = blocks(x, self.block)
        n_last = x.size - (rows.shape[0] - 1) * rows.shape[1]
        counts = np.full(rows.shape[0], rows.shape[1], dtype=np.float32)
        counts[-1] = n_last  # padding zeros do not count in the last block's mean
        scale = (np.abs(rows).sum(axis=1) / counts).astype(np.float32)
        return {"q": np.packbits(x >= 0, bitorder="little"), "scale": scale}, {}

    def decode_tensor(self, parts: Arrays, meta: Mapping[str, Any], n: int) -> np.ndarray:
        q, scale = parts.get("q"), parts.get("scale")
        b = max(n if self.block <= 0 or self.block >= n else self.block, 1)
        if q is None or scale is None or q.dtype != np.uint8 or q.size != (n + 7) // 8 \
                or scale.dtype != np.float32 or scale.shape != (math.ceil(n / b),):
            raise ProtocolError(f"sign: expected {(n + 7) // 8} packed sign bytes and {math.ceil(n / b)} float32 scales")
        signs = np.unpackbits(q, count=n, bitorder="little").astype(np.float32) * 2 - 1
        return signs * np.repeat(scale, b)[:n]


def int8(block: int = 0, error_feedback: bool = False) -> UniformQuantizer:
    """8-bit symmetric quantisation with nearest rounding (max-abs scale per block)."""
    return UniformQuantizer(127, "max", False, block, name="int8", error_feedback=error_feedback)


def qsgd(bits: int = 4, block: int = 0, error_feedback: bool = False) -> UniformQuantizer:
    """QSGD with ``2^(bits−1) − 1`` levels, L2-norm scale per bucket, stochastic rounding."""
    if not 2 <= bits <= 8:
        raise ConfigError(f"qsgd needs 2 … 8 bits, got {bits}")
    return UniformQuantizer(2 ** (bits - 1) - 1, "l2", True, block, name="qsgd", error_feedback=error_feedback)


def terngrad(block: int = 0, clip_sigmas: float = 0.0, error_feedback: bool = False) -> UniformQuantizer:
    """TernGrad: values in {−s, 0, s} with s = max|v| per block, stochastic (2 bits per value)."""
    return UniformQuantizer(1, "max", True, block, clip_sigmas, name="terngrad", error_feedback=error_feedback)
