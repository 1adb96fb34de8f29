"""Client-side pruning: each party prunes its trained local model before upload and sends only
the surviving weights' updates plus a compact mask.

- ``magnitude``: Han et al. 2015, "Learning both Weights and Connections for Efficient Neural
  Networks" (NeurIPS): in every weight tensor (2-D and up) the fraction ``p`` of entries with the
  smallest ``|w|`` of the local model ``w = global + delta`` is set to zero.
- ``channel``: Li et al. 2017, "Pruning Filters for Efficient ConvNets" (ICLR): the fraction
  ``p`` of output channels (rows of dim 0) with the smallest L2 norm is set to zero; the mask is
  one bit per channel.

On the wire a tensor is its index set (``encode_indices``: a packed bitmask at these densities)
or channel bitmask plus the kept entries of the update. The server rebuilds the party's pruned
local model against the global model it sent: kept entries get the sent update, pruned entries
the update ``−global`` (the weight becomes zero). Biases and other 1-D tensors are sent whole.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from pollen.compression.base import SEP, split_parts
from pollen.compression.packing import decode_indices, decode_values, encode_indices, encode_values
from pollen.compression.sparsify import top_indices
from pollen.errors import ConfigError, ProtocolError
from pollen.transforms.base import StepContext, UpdateStep
from pollen.types import ModelState, Update, is_float


def kept(n: int, fraction: float) -> int:
    """Entries (or channels) that survive pruning ``fraction`` of ``n`` (at least one)."""
    return max(1, n - math.floor(fraction * n))


class Prune(UpdateStep):
    """Prune each party's local model before upload.

    Args:
        method: ``magnitude`` or ``channel``.
        fraction: share of entries (magnitude) or output channels (channel) set to zero.
        values: encoding of the kept update entries: fp32, fp16, bf16 or int8.
    """

    name = "prune"
    stage = "compress"
    linear = False
    unbiased = False

    def __init__(self, method: str = "magnitude", fraction: float = 0.5, values: str = "fp32") -> None:
        if method not in ("magnitude", "channel"):
            raise ConfigError(f"pruning method must be 'magnitude' or 'channel', got {method!r}")
        if not 0 <= fraction < 1:
            raise ConfigError(f"prune fraction must be in [0, 1), got {fraction}")
        self.method, self.fraction, self.values = method, fraction, values

    def mask_indices(self, local: np.ndarray) -> np.ndarray:
        """Sorted flat indices of the entries of ``local`` that survive."""
        if self.method == "magnitude":
            return top_indices(local.reshape(-1), kept(local.size, self.fraction))
        rows = local.reshape(local.shape[0], -1)  # (channels, fan_in)
        keep = np.sort(top_indices(np.linalg.norm(rows, axis=1), kept(rows.shape[0], self.fraction)))
        return (keep[:, None] * rows.shape[1] + np.arange(rows.shape[1])).reshape(-1)

    def encode(self, update: Update, ctx: StepContext) -> Update:
        """Prune ``global + delta`` and send the mask and the kept entries of the delta."""
        out: ModelState = {}
        metas: dict[str, Any] = {}
        for name, d in update.delta.items():
            g = ctx.global_state.get(name)
            if not is_float(d) or d.ndim < 2 or g is None or g.shape != d.shape:
                out[name] = d
                continue
            local = (np.asarray(g, np.float32) + d).astype(np.float32)
            idx = self.mask_indices(local)
            if self.method == "magnitude":
                arrays, meta = encode_indices(idx, d.size)
            else:
                channels = np.zeros(d.shape[0], dtype=bool)
                channels[idx[:: int(np.prod(d.shape[1:]))] // int(np.prod(d.shape[1:]))] = True
                arrays, meta = {"ch": np.packbits(channels, bitorder="little")}, {"index": "channels", "k": idx.size}
            values, vmeta = encode_values(np.asarray(d, np.float32).reshape(-1)[idx], self.values)
            out.update({f"{name}{SEP}{p}": a for p, a in {**arrays, **values}.items()})
            metas[name] = {"shape": list(d.shape), "dtype": d.dtype.str, **meta, **vmeta}
        return update.with_(delta=out, codec={**update.codec, self.name: metas})

    def decode(self, update: Update) -> Update:
        """Refused: pruned entries are rebuilt against the global model (see ``decode_against``)."""
        raise ProtocolError("a pruned update can only be decoded against the global model that was sent")

    def decode_against(self, update: Update, reference: Mapping[str, np.ndarray] | None) -> Update:
        """Rebuild the dense update ``pruned local − global``.

        Raises:
            ProtocolError: no reference model, or arrays that do not fit the metadata.
        """
        if reference is None:
            return self.decode(update)
        metas = update.codec.get(self.name)
        if not isinstance(metas, Mapping):
            raise ProtocolError(f"update was not pruned (codec metadata: {sorted(update.codec)})")
        parts, out = split_parts(update.delta, metas)
        for name, meta in metas.items():
            g = reference.get(name)
            shape = tuple(int(s) for s in meta.get("shape", ()))
            if g is None or g.shape != shape:
                raise ProtocolError(f"pruned tensor {name!r} of shape {shape} does not match the global model")
            n = g.size
            if meta.get("index") == "channels":
                fan = n // shape[0]
                ch = parts[name].get("ch")
                if ch is None or ch.size != (shape[0] + 7) // 8:
                    raise ProtocolError(f"pruned tensor {name!r}: channel mask missing or of the wrong size")
                keep = np.flatnonzero(np.unpackbits(ch, count=shape[0], bitorder="little"))
                idx = (keep[:, None] * fan + np.arange(fan)).reshape(-1)
                if idx.size != int(meta.get("k", -1)):
                    raise ProtocolError(f"pruned tensor {name!r}: channel mask does not match k")
            else:
                idx = decode_indices(parts[name], dict(meta), n)
            dense = -np.asarray(g, dtype=np.float32).reshape(-1)
            dense[idx] = decode_values(parts[name], dict(meta), idx.size)
            out[name] = dense.reshape(shape).astype(np.dtype(meta.get("dtype", "<f4")), copy=False)
        codec = {k: v for k, v in update.codec.items() if k != self.name}
        return update.with_(delta=out, codec=codec)
