"""Low-level encodings shared by the codecs: bit packing, bfloat16 as uint16, block scaling,
compact index sets and the value encodings of sparse tensors.

Everything here maps numpy arrays to numpy arrays (plus JSON-able metadata), because updates
travel as safetensors: no pickle, no Python objects.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pollen.errors import ConfigError, ProtocolError

Arrays = dict[str, np.ndarray]

FP16_MAX = float(np.finfo(np.float16).max)  # 65504


# ------------------------------------------------------------------ bits
def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned integers below ``2**bits`` into a uint8 array, ``bits`` bits each.

    Args:
        values: integers in ``[0, 2**bits)``, any shape (flattened).
        bits: bits per value, 1 … 8.
    """
    v = np.ascontiguousarray(values, dtype=np.uint8).reshape(-1)
    if bits == 8:
        return v.copy()
    planes = np.unpackbits(v[:, None], axis=1, bitorder="little")[:, :bits]  # (n, bits)
    return np.packbits(planes.reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of ``pack_bits``: ``count`` uint8 values.

    Raises:
        ProtocolError: ``packed`` holds fewer than ``count`` values.
    """
    if packed.dtype != np.uint8 or packed.ndim != 1 or packed.size * 8 < count * bits:
        raise ProtocolError(f"packed array of {packed.size} bytes ({packed.dtype}) cannot hold {count} values of {bits} bits")
    if bits == 8:
        return packed[:count].copy()
    flat = np.unpackbits(packed, bitorder="little")[: count * bits].reshape(count, bits)
    full = np.zeros((count, 8), dtype=np.uint8)
    full[:, :bits] = flat
    return np.packbits(full, axis=1, bitorder="little").reshape(-1)


# ------------------------------------------------------------------ bfloat16
def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns as uint16, rounding to nearest even (numpy has no bf16)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((u >> 16) & 1) + np.uint32(0x7FFF)
    return ((u + rounding) >> 16).astype(np.uint16)


def from_bf16(h: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) → float32 (exact)."""
    return (h.astype(np.uint32) << 16).view(np.float32)


# ------------------------------------------------------------------ block scaling
def blocks(x: np.ndarray, block: int) -> np.ndarray:
    """A flat float32 array as ``(num_blocks, block)`` rows, the last one zero-padded.

    ``block`` 0 means one block holding the whole array.
    """
    n = x.size
    b = n if block <= 0 or block >= n else block
    b = max(b, 1)
    rows = math.ceil(n / b)
    if rows * b == n:
        return x.reshape(rows, b)
    padded = np.zeros(rows * b, dtype=np.float32)
    padded[:n] = x
    return padded.reshape(rows, b)


# ------------------------------------------------------------------ varints
def varint_encode(values: np.ndarray) -> np.ndarray:
    """Non-negative integers below 2^35 as LEB128 varints (7 bits per byte, high bit = more)."""
    v = np.asarray(values, dtype=np.int64)
    nb = 1 + sum((v >= (1 << (7 * j))).astype(np.int64) for j in range(1, 5))  # bytes per value
    starts = np.cumsum(nb) - nb
    out = np.empty(int(nb.sum()), dtype=np.uint8)
    for j in range(5):
        m = nb > j
        more = (nb[m] > j + 1).astype(np.int64) << 7
        out[starts[m] + j] = ((v[m] >> (7 * j)) & 0x7F) | more
    return out


def varint_decode(data: np.ndarray, count: int) -> np.ndarray:
    """Inverse of ``varint_encode``: ``count`` int64 values.

    Raises:
        ProtocolError: a truncated or over-long stream, or the wrong number of values.
    """
    if data.dtype != np.uint8 or data.ndim != 1:
        raise ProtocolError(f"varints must be a 1-D uint8 array, got {data.dtype} {data.shape}")
    b = data.astype(np.int64)
    last = (b & 0x80) == 0
    ends = np.flatnonzero(last)
    if ends.size != count or (data.size and ends[-1] != data.size - 1):
        raise ProtocolError(f"varint stream holds {ends.size} complete values, expected {count}")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    group = np.concatenate(([0], np.cumsum(last)[:-1]))
    starts = np.concatenate(([0], ends[:-1] + 1))
    pos = np.arange(data.size) - starts[group]
    if pos.max() >= 5:
        raise ProtocolError("a varint longer than 5 bytes")
    out = np.zeros(count, dtype=np.int64)
    np.add.at(out, group, (b & 0x7F) << (7 * pos))
    return out


# ------------------------------------------------------------------ index sets
def encode_indices(idx: np.ndarray, n: int) -> tuple[Arrays, dict[str, Any]]:
    """The smallest of four encodings of a sorted index set over ``[0, n)``.

    - ``varint``: differences between consecutive indices as LEB128 varints (1 byte for gaps
      below 128: about 1–1.3 bytes an index at 1–10 % density),
    - ``gaps``: uint16 differences (2 bytes each; only when every gap is below 65,536),
    - ``mask``: a bitmask of ``n`` bits packed into uint8 (``n/8`` bytes, best at high density),
    - ``int32``: the indices themselves (4 bytes each).
    """
    idx = np.asarray(idx, dtype=np.int64)
    k = idx.size
    gaps = np.diff(idx, prepend=0)
    varints = varint_encode(gaps)
    options: list[tuple[int, str]] = [((n + 7) // 8, "mask"), (varints.size, "varint")]
    if n <= 2**31:
        options.append((4 * k, "int32"))
    if k and int(gaps.max(initial=0)) < 65536:
        options.append((2 * k, "gaps"))
    _, kind = min(options)
    if kind == "varint":
        return {"vgaps": varints}, {"index": "varint", "k": k}
    if kind == "gaps":
        return {"gaps": np.diff(idx, prepend=0).astype(np.uint16)}, {"index": "gaps", "k": k}
    if kind == "mask":
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
        return {"mask": np.packbits(mask, bitorder="little")}, {"index": "mask", "k": k}
    return {"idx": idx.astype(np.int32)}, {"index": "int32", "k": k}


def decode_indices(arrays: Arrays, meta: dict[str, Any], n: int) -> np.ndarray:
    """Inverse of ``encode_indices`` (int64 indices, sorted).

    Raises:
        ProtocolError: a missing array or an index outside ``[0, n)``.
    """
    kind, k = meta.get("index"), int(meta.get("k", -1))
    try:
        if kind == "varint":
            idx = np.cumsum(varint_decode(arrays["vgaps"], k))
        elif kind == "gaps":
            idx = np.cumsum(arrays["gaps"].astype(np.int64))
        elif kind == "mask":
            packed = arrays["mask"]
            if packed.size != (n + 7) // 8:
                raise ProtocolError(f"mask has {packed.size} bytes, expected {(n + 7) // 8}")
            idx = np.flatnonzero(np.unpackbits(packed, count=n, bitorder="little"))
        elif kind == "int32":
            idx = arrays["idx"].astype(np.int64)
        else:
            raise ProtocolError(f"unknown index encoding {kind!r}; expected varint, gaps, mask or int32")
    except KeyError as exc:
        raise ProtocolError(f"index encoding {kind!r} needs array {exc}") from None
    if idx.size != k or (k and (idx[0] < 0 or idx[-1] >= n)):
        raise ProtocolError(f"index set of {idx.size} entries in [0, {n}) does not match k={k}")
    return idx


# ------------------------------------------------------------------ values
VALUE_KINDS = ("fp32", "fp16", "bf16", "int8")


def encode_values(v: np.ndarray, kind: str) -> tuple[Arrays, dict[str, Any]]:
    """A flat float32 vector as ``fp32``, ``fp16``, ``bf16`` (uint16 bits) or ``int8`` with one
    max-abs scale (nearest rounding, error at most scale/254).

    Raises:
        ConfigError: an unknown kind.
        ValueError: fp16 cannot hold a value (|v| > 65504): use bf16.
    """
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    if kind == "fp32":
        return {"v": v.copy()}, {"values": kind}
    if kind == "fp16":
        if v.size and float(np.abs(v).max()) > FP16_MAX:
            raise ValueError(f"a value of magnitude {float(np.abs(v).max()):.3g} exceeds float16's range (65504); use bf16")
        return {"v": v.astype(np.float16)}, {"values": kind}
    if kind == "bf16":
        return {"v": to_bf16(v)}, {"values": kind}
    if kind == "int8":
        scale = np.float32(np.abs(v).max(initial=0.0) / 127.0)
        q = np.rint(v / scale).astype(np.int8) if scale > 0 else np.zeros(v.size, np.int8)
        return {"v": q, "s": np.array([scale], dtype=np.float32)}, {"values": kind}
    raise ConfigError(f"unknown value encoding {kind!r}; choose one of {', '.join(VALUE_KINDS)}")


def decode_values(arrays: Arrays, meta: dict[str, Any], count: int) -> np.ndarray:
    """Inverse of ``encode_values`` (float32, ``count`` entries).

    Raises:
        ProtocolError: missing arrays, a wrong dtype or a wrong length.
    """
    kind = meta.get("values")
    want = {"fp32": np.float32, "fp16": np.float16, "bf16": np.uint16, "int8": np.int8}.get(kind)
    v = arrays.get("v")
    if want is None or v is None or v.dtype != want or v.shape != (count,):
        got = None if v is None else (v.dtype, v.shape)
        raise ProtocolError(f"values encoded as {kind!r}: expected {count} entries of {want}, got {got}")
    if kind == "bf16":
        return from_bf16(v)
    if kind == "int8":
        s = arrays.get("s")
        if s is None or s.shape != (1,):
            raise ProtocolError("int8 values need a scale array of one float32")
        return v.astype(np.float32) * s.astype(np.float32)[0]
    return v.astype(np.float32)
