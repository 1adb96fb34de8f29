"""Steps that act on what the server sends rather than on updates: downlink compression of the
global model, and mixed-precision (autocast) local training.

Downlink: the server sends the global model as fp16, bf16 (uint16 bit patterns) or int8 with one
max-abs scale per block; the party trains from the decoded model and returns ``local − decoded``,
which the server adds to its exact global model, so the rounding error of the download does not
accumulate across rounds. Each encoded tensor keeps its shape (``<name>::v``; int8 adds the
float32 scales ``<name>::s``), so the party needs no metadata beyond the codec name, which
travels in ``RoundConfig.extra["downlink"]``.
"""

from __future__ import annotations

import numpy as np

from pollen.compression.base import SEP
from pollen.compression.packing import FP16_MAX, blocks, from_bf16, to_bf16
from pollen.errors import ConfigError, ProtocolError
from pollen.transforms.base import UpdateStep
from pollen.types import ModelState, RoundConfig, is_float

DOWNLINK_KEY = "downlink"
DOWNLINK_KINDS = ("fp16", "bf16", "int8")


def _block_len(n: int, block: int) -> int:
    """Entries per block of ``blocks`` (the whole tensor when ``block`` is 0)."""
    return max(n if block <= 0 or block >= n else block, 1)


def encode_model(state: ModelState, kind: str, block: int = 0) -> ModelState:
    """The model as sent: every float tensor in ``kind``; integer buffers unchanged.

    Raises:
        ValueError: fp16 cannot hold a weight (|w| > 65504): use bf16.
    """
    out: ModelState = {}
    for name, w in state.items():
        if not is_float(w) or w.size == 0:
            out[name] = w
            continue
        x = np.asarray(w, dtype=np.float32)
        if kind == "fp16":
            if float(np.abs(x).max()) > FP16_MAX:
                raise ValueError(f"weight {name!r} exceeds float16's range (65504); use --downlink bf16")
            out[f"{name}{SEP}v"] = x.astype(np.float16)
        elif kind == "bf16":
            out[f"{name}{SEP}v"] = to_bf16(x).reshape(x.shape)
        elif kind == "int8":
            rows = blocks(x.reshape(-1), block)
            scale = (np.abs(rows).max(axis=1) / 127.0).astype(np.float32)
            q = np.rint(rows / np.where(scale > 0, scale, 1.0)[:, None]).astype(np.int8)
            out[f"{name}{SEP}v"] = q.reshape(-1)[: x.size].reshape(x.shape)
            out[f"{name}{SEP}s"] = scale
        else:
            raise ConfigError(f"unknown downlink codec {kind!r}; choose one of {', '.join(DOWNLINK_KINDS)}")
    return out


def decode_model(state: ModelState, kind: str, block: int = 0) -> ModelState:
    """Inverse of ``encode_model`` (float32 tensors).

    Raises:
        ProtocolError: arrays of the wrong dtype or scales that do not fit.
    """
    want = {"fp16": np.float16, "bf16": np.uint16, "int8": np.int8}.get(kind)
    if want is None:
        raise ProtocolError(f"unknown downlink codec {kind!r}; expected one of {', '.join(DOWNLINK_KINDS)}")
    out: ModelState = {}
    for key, arr in state.items():
        name, sep, part = key.rpartition(SEP)
        if not sep:
            out[key] = arr
            continue
        if part == "s":
            continue
        if part != "v" or arr.dtype != want:
            raise ProtocolError(f"downlink tensor {key!r}: expected {np.dtype(want)} values, got {arr.dtype}")
        if kind == "fp16":
            out[name] = arr.astype(np.float32)
        elif kind == "bf16":
            out[name] = from_bf16(arr.reshape(-1)).reshape(arr.shape)
        else:
            scale = state.get(f"{name}{SEP}s")
            b = _block_len(arr.size, block)
            rows = -(-arr.size // b)
            if scale is None or scale.dtype != np.float32 or scale.shape != (rows,):
                raise ProtocolError(f"downlink tensor {name!r}: expected {rows} float32 scales")
            per = np.repeat(scale, b)[: arr.size]
            out[name] = (arr.reshape(-1).astype(np.float32) * per).reshape(arr.shape)
    return out


class Downlink(UpdateStep):
    """Compress the global model on its way to the parties (updates pass through unchanged).

    Args:
        kind: fp16, bf16 or int8.
        block: int8 values sharing one scale (0: per tensor).
    """

    name = "downlink"
    stage = "compress"
    linear = True  # updates are untouched, so sums still work

    def __init__(self, kind: str = "fp16", block: int = 0) -> None:
        if kind not in DOWNLINK_KINDS:
            raise ConfigError(f"unknown downlink codec {kind!r}; choose one of {', '.join(DOWNLINK_KINDS)}")
        self.kind, self.block = kind, block

    def configure(self, config: RoundConfig) -> RoundConfig:
        """Tell parties how the model they receive is encoded."""
        return config.with_(extra={**config.extra, DOWNLINK_KEY: {"kind": self.kind, "block": self.block}})

    def encode_model(self, state: ModelState, config: RoundConfig) -> ModelState:
        """Server side: the model as sent."""
        return encode_model(state, self.kind, self.block)

    def decode_model(self, state: ModelState, config: RoundConfig) -> ModelState:
        """Party side: the model to train from."""
        spec = config.extra.get(DOWNLINK_KEY) or {}
        return decode_model(state, str(spec.get("kind", self.kind)), int(spec.get("block", self.block)))


AUTOCAST_KEY = "autocast"


class Autocast(UpdateStep):
    """Ask parties to train under ``torch.autocast('cpu', dtype)`` (updates pass through).

    Args:
        dtype: ``bf16`` or ``fp16``.
    """

    name = "autocast"
    stage = "compress"
    linear = True

    def __init__(self, dtype: str = "bf16") -> None:
        if dtype not in ("bf16", "fp16"):
            raise ConfigError(f"autocast dtype must be 'bf16' or 'fp16', got {dtype!r}")
        self.dtype = dtype

    def configure(self, config: RoundConfig) -> RoundConfig:
        """Put the autocast dtype into the round config the trainer reads."""
        return config.with_(extra={**config.extra, AUTOCAST_KEY: self.dtype})
