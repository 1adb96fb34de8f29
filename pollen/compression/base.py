"""The shape every update codec shares: encode each float tensor of an update into a few arrays
named ``<tensor>::<part>`` plus JSON metadata, decode them back on the server, and optionally
keep what was lost on the party for the next round (error feedback).

Error feedback: Seide et al. 2014, "1-bit stochastic gradient descent and its application to
data-parallel distributed training of speech DNNs" (Interspeech); analysed by Karimireddy et al.
2019, "Error Feedback Fixes SignSGD and other Gradient Compression Schemes" (ICML). The party adds
its residual ``e`` to the update ``x``, sends ``C(x + e)`` and keeps ``e' = x + e − D(C(x + e))``.
The residual lives in ``StepContext.party_state`` (kept by the party runtime between rounds, in
simulation and over gRPC alike).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pollen.compression.packing import Arrays
from pollen.errors import ProtocolError
from pollen.transforms.base import StepContext, UpdateStep
from pollen.types import ModelState, Update, is_float

SEP = "::"

# Statistics that are not trained but overwritten (BatchNorm's running mean and variance): sent
# as they are. They are tiny, and error feedback on them double-counts (the next delta already
# carries what was dropped), which drove a running variance negative in testing.
STATISTICS_SUFFIXES = ("running_mean", "running_var")


def is_statistic(name: str) -> bool:
    """True for tensors codecs leave alone (BatchNorm running statistics)."""
    return name.endswith(STATISTICS_SUFFIXES)


def split_parts(delta: Mapping[str, np.ndarray], names: Mapping[str, Any]) -> tuple[dict[str, Arrays], ModelState]:
    """Group ``<name>::<part>`` arrays by tensor name; return ``(parts per name, other arrays)``.

    Raises:
        ProtocolError: a tensor named in the metadata has no arrays.
    """
    parts: dict[str, Arrays] = {n: {} for n in names}
    rest: ModelState = {}
    for key, arr in delta.items():
        base, sep, part = key.rpartition(SEP)
        if sep and base in parts:
            parts[base][part] = arr
        else:
            rest[key] = arr
    empty = [n for n, p in parts.items() if not p]
    if empty:
        raise ProtocolError(f"encoded update lacks the arrays of tensor {empty[0]!r}")
    return parts, rest


class TensorCodec(UpdateStep):
    """An update codec that encodes float tensors one by one.

    Subclasses implement ``encode_tensor`` / ``decode_tensor`` on flat float32 vectors.

    Attributes:
        unbiased: True when ``E[decode(encode(x))] = x`` over the codec's randomness.
        error_feedback: keep the codec's error on the party and add it to the next update.
    """

    stage = "compress"
    linear = False
    unbiased = False

    def __init__(self, error_feedback: bool = False) -> None:
        self.error_feedback = error_feedback

    # -- per tensor ---------------------------------------------------------------------
    def encode_tensor(self, x: np.ndarray, rng: np.random.Generator) -> tuple[Arrays, dict[str, Any]]:
        """Encode a flat float32 vector into arrays and JSON-able metadata."""
        raise NotImplementedError

    def decode_tensor(self, parts: Arrays, meta: Mapping[str, Any], n: int) -> np.ndarray:
        """Decode the arrays of one tensor into a flat float32 vector of ``n`` entries."""
        raise NotImplementedError

    # -- whole updates ------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        """This step's key in ``party_state`` (the error-feedback residual)."""
        return f"compress:{self.name}:residual"

    def encode(self, update: Update, ctx: StepContext) -> Update:
        """Encode every float tensor of the update (integer buffers travel unchanged)."""
        residual = ctx.party_state.get(self.state_key, {}) if self.error_feedback else {}
        new_residual: ModelState = {}
        out: ModelState = {}
        metas: dict[str, Any] = {}
        for name, value in update.delta.items():
            if not is_float(value) or value.size == 0 or is_statistic(name):
                out[name] = value
                continue
            x = np.asarray(value, dtype=np.float32).reshape(-1)
            r = residual.get(name)
            if r is not None and r.shape == x.shape:
                x = x + r
            arrays, meta = self.encode_tensor(x, ctx.rng)
            if self.error_feedback:
                new_residual[name] = x - self.decode_tensor(arrays, meta, x.size)
            out.update({f"{name}{SEP}{part}": arr for part, arr in arrays.items()})
            metas[name] = {"shape": list(value.shape), "dtype": value.dtype.str, **meta}
        if self.error_feedback:
            ctx.party_state[self.state_key] = new_residual
        return update.with_(delta=out, codec={**update.codec, self.name: metas})

    def decode(self, update: Update) -> Update:
        """Rebuild the float tensors from their encoded arrays.

        Raises:
            ProtocolError: the update was not encoded by this codec, or its arrays do not fit.
        """
        metas = update.codec.get(self.name)
        if not isinstance(metas, Mapping):
            raise ProtocolError(f"update was not encoded with codec {self.name!r} (codec metadata: {sorted(update.codec)})")
        parts, out = split_parts(update.delta, metas)
        for name, meta in metas.items():
            try:
                shape = tuple(int(d) for d in meta["shape"])
                dtype = np.dtype(meta["dtype"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ProtocolError(f"codec metadata of tensor {name!r} is malformed: {exc}") from None
            n = int(np.prod(shape, dtype=np.int64))
            out[name] = self.decode_tensor(parts[name], meta, n).reshape(shape).astype(dtype, copy=False)
        codec = {k: v for k, v in update.codec.items() if k != self.name}
        return update.with_(delta=out, codec=codec)
