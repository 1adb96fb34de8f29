"""Top-k sparsification: send only the largest-magnitude entries of each tensor.

Aji & Heafield 2017, "Sparse Communication for Distributed Gradient Descent" (EMNLP) and Lin et
al. 2018, "Deep Gradient Compression" (ICLR): keep the ``k = ⌈f·n⌉`` entries of largest ``|v|`` in
each tensor; what is dropped is kept on the party and added to its next update (error feedback,
see ``pollen.compression.base``) — without it top-k at 1 % loses most of the signal.

Each tensor travels as an index set (``encode_indices`` picks uint16 gaps, a packed bitmask or
int32, whichever is smallest) plus the kept values (fp32, fp16, bf16 or int8 with one scale).
The error bound: every dropped entry is at most the smallest kept magnitude; kept entries carry
only the value encoding's rounding error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from pollen.compression.base import TensorCodec
from pollen.compression.packing import Arrays, decode_indices, decode_values, encode_indices, encode_values
from pollen.errors import ConfigError, ProtocolError


def top_indices(x: np.ndarray, k: int) -> np.ndarray:
    """Sorted indices of the ``k`` largest ``|x|`` (ties broken by position, deterministic)."""
    if k >= x.size:
        return np.arange(x.size)
    part = np.argpartition(np.abs(x), x.size - k)[x.size - k :]
    return np.sort(part)


class TopK(TensorCodec):
    """Keep the largest ``fraction`` of each tensor's entries.

    Args:
        fraction: share of entries kept (at least one per tensor).
        values: encoding of the kept values: fp32, fp16, bf16 or int8.
        error_feedback: keep the dropped part on the party for the next round.
    """

    name = "topk"

    def __init__(self, fraction: float = 0.01, values: str = "fp32", error_feedback: bool = False) -> None:
        super().__init__(error_feedback)
        if not 0 < fraction <= 1:
            raise ConfigError(f"top-k fraction must be in (0, 1], got {fraction}")
        self.fraction, self.values = fraction, values

    def k_for(self, n: int) -> int:
        """Entries kept out of ``n``."""
        return max(1, min(n, math.ceil(self.fraction * n)))

    def encode_tensor(self, x: np.ndarray, rng: np.random.Generator) -> tuple[Arrays, dict[str, Any]]:
        idx = top_indices(x, self.k_for(x.size))
        index_arrays, index_meta = encode_indices(idx, x.size)
        value_arrays, value_meta = encode_values(x[idx], self.values)
        return {**index_arrays, **value_arrays}, {**index_meta, **value_meta}

    def decode_tensor(self, parts: Arrays, meta: Mapping[str, Any], n: int) -> np.ndarray:
        idx = decode_indices(parts, dict(meta), n)
        if idx.size > self.k_for(n):
            raise ProtocolError(f"topk: {idx.size} entries sent, at most {self.k_for(n)} allowed for {n}")
        out = np.zeros(n, dtype=np.float32)
        out[idx] = decode_values(parts, dict(meta), idx.size)
        return out
