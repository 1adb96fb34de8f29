"""Tensors on the wire in the safetensors layout, streamed without building the whole payload.

The layout is safetensors' (https://github.com/huggingface/safetensors, "Format"): an 8-byte
little-endian header length, a JSON header ``{name: {dtype, shape, data_offsets}, "__metadata__":
{...}}`` padded with spaces to 8 bytes, then the raw little-endian tensor bytes. Any safetensors
reader can read what ``encode`` writes, and ``decode`` reads what the safetensors library writes.

It is hand-written rather than ``safetensors.numpy.save``/``load`` because those build the whole
payload as one ``bytes`` (and copy it again on load): here the sender cuts chunks straight out of
the arrays' memory and the receiver returns numpy views into the buffer the chunks were copied to
— one copy on each side instead of three (see benchmarks/results/w4-grpc.md). Every header field
is checked before a byte is interpreted.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from pollen.errors import ProtocolError

DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I8": "i1", "I16": "<i2", "I32": "<i4", "I64": "<i8",
          "U8": "u1", "U16": "<u2", "U32": "<u4", "U64": "<u8", "BOOL": "?"}
CODES = {np.dtype(v).newbyteorder("<") if np.dtype(v).itemsize > 1 else np.dtype(v): k for k, v in DTYPES.items()}
MAX_HEADER = 64 * 1024 * 1024
META = "pollen"


class FileSpan:
    """``nbytes`` raw little-endian bytes of one tensor at ``offset`` of an open ``file``: a tensor
    the coordinator keeps on disk instead of in memory during a big model's round
    (``pollen.server.spill``), streamed by positional reads (never mapped into memory). The span
    holds the file open: a stream still reading it (a straggler's download) outlives the round."""

    __slots__ = ("file", "offset", "nbytes")

    def __init__(self, file: Any, offset: int, nbytes: int) -> None:
        self.file, self.offset, self.nbytes = file, offset, nbytes

    def __len__(self) -> int:
        return self.nbytes

    def read(self, start: int, n: int) -> bytes:
        """``n`` bytes from ``start`` (relative to the span).

        Raises:
            ProtocolError: the file was closed, or is shorter than the span.
        """
        try:
            fd = self.file.fileno()
        except ValueError:
            raise ProtocolError("the tensor's file was closed") from None
        out = os.pread(fd, n, self.offset + start)
        while len(out) < n:  # pread may return less than asked (signals, very large reads)
            more = os.pread(fd, n - len(out), self.offset + start + len(out))
            if not more:
                raise ProtocolError(f"the tensor's file ends {n - len(out)} bytes early")
            out += more
        return out


class Encoded:
    """A state laid out for sending: the header bytes and the arrays' memory, in order.

    A value with a ``file_span`` attribute (a :class:`FileSpan`, plus ``shape`` and a little-endian
    ``dtype``: ``pollen.server.spill.SpilledTensor``) is streamed from its file, chunk by chunk.
    """

    def __init__(self, state: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> None:
        header: dict[str, Any] = {"__metadata__": {META: json.dumps(dict(meta or {}))}}
        self.parts: list[memoryview | FileSpan] = []
        offset = 0
        for name, value in state.items():
            span = getattr(value, "file_span", None)
            if span is not None:
                code = CODES.get(np.dtype(value.dtype))
                if code is None:
                    raise ProtocolError(f"tensor {name!r} has dtype {value.dtype}, which cannot be sent")
                header[name] = {"dtype": code, "shape": list(value.shape), "data_offsets": [offset, offset + span.nbytes]}
                offset += span.nbytes
                if span.nbytes:
                    self.parts.append(span)
                continue
            arr = np.asarray(value)
            code = CODES.get(arr.dtype.newbyteorder("<") if arr.dtype.itemsize > 1 else arr.dtype)
            if code is None:
                raise ProtocolError(f"tensor {name!r} has dtype {arr.dtype}, which cannot be sent; use one of {sorted(DTYPES)}")
            arr = np.asarray(arr, dtype=np.dtype(DTYPES[code]), order="C")  # keeps 0-d arrays 0-d
            header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
            offset += arr.nbytes
            if arr.nbytes:
                self.parts.append(memoryview(arr.reshape(-1)).cast("B"))
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.head = struct.pack("<Q", len(raw)) + raw
        self.size = len(self.head) + offset

    def chunks(self, chunk_bytes: int) -> Iterator[bytes]:
        """The payload in pieces of ``chunk_bytes`` (the last may be shorter); one copy per byte."""
        pieces, have = [], 0
        for part in [memoryview(self.head), *self.parts]:
            if isinstance(part, FileSpan):
                at = 0
                while at < part.nbytes:
                    take = min(part.nbytes - at, chunk_bytes - have)
                    pieces.append(part.read(at, take))
                    have += take
                    at += take
                    if have == chunk_bytes:
                        yield b"".join(pieces)  # one piece: the bytes read, not copied again
                        pieces, have = [], 0
                continue
            while len(part):
                take = part[: chunk_bytes - have]
                pieces.append(take)
                have += len(take)
                part = part[len(take):]
                if have == chunk_bytes:
                    yield b"".join(pieces)
                    pieces, have = [], 0
        if pieces or self.size == 0:
            yield b"".join(pieces)

    def tobytes(self) -> bytes:
        """The whole payload as one ``bytes``."""
        return b"".join([self.head, *(p.read(0, p.nbytes) if isinstance(p, FileSpan) else p for p in self.parts)])


def decode(buf: bytes | bytearray | memoryview) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The tensors (views into ``buf``, in header order) and metadata of a payload.

    Raises:
        ProtocolError: a malformed header, an unknown dtype, offsets that do not tile the data,
            or a shape that does not match its bytes.
    """
    view = memoryview(buf).cast("B")
    if len(view) < 8:
        raise ProtocolError(f"tensor payload too short ({len(view)} bytes)")
    (n,) = struct.unpack("<Q", view[:8])
    if n > min(len(view) - 8, MAX_HEADER):
        raise ProtocolError(f"tensor payload header claims {n} bytes; the payload has {len(view) - 8} (truncated or garbage)")
    try:
        header = json.loads(bytes(view[8 : 8 + n]))
        meta = json.loads(header.pop("__metadata__", {}).get(META, "{}"))
    except (ValueError, AttributeError, TypeError) as exc:
        raise ProtocolError(f"tensor payload header is not valid JSON: {exc}") from None
    if not isinstance(header, dict) or not isinstance(meta, dict):
        raise ProtocolError("tensor payload header must be a JSON object")
    data = view[8 + n :]
    out: dict[str, np.ndarray] = {}
    end = 0
    for name, info in sorted(header.items(), key=lambda kv: _offsets(kv)[0]):
        begin, stop = _offsets((name, info))
        dtype = DTYPES.get(info.get("dtype"))
        shape = info.get("shape")
        if dtype is None:
            raise ProtocolError(f"tensor {name!r}: unknown dtype {info.get('dtype')!r}; known: {sorted(DTYPES)}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ProtocolError(f"tensor {name!r}: bad shape {shape!r}")
        if begin != end or stop > len(data):
            raise ProtocolError(f"tensor {name!r}: data_offsets [{begin}, {stop}] do not follow {end} within {len(data)} bytes")
        count = int(np.prod(shape, dtype=np.int64))
        if count * np.dtype(dtype).itemsize != stop - begin:
            raise ProtocolError(f"tensor {name!r}: shape {shape} of {info['dtype']} needs {count * np.dtype(dtype).itemsize} bytes, got {stop - begin}")
        out[name] = np.frombuffer(data[begin:stop], dtype=dtype, count=count).reshape(shape) if count else np.zeros(shape, dtype)
        end = stop
    if end != len(data):
        raise ProtocolError(f"tensor payload has {len(data) - end} bytes after its last tensor")
    order = meta.get("order")
    if isinstance(order, list) and set(order) == set(out):
        out = {k: out[k] for k in order}
    return out, meta


def _offsets(item: tuple[str, Any]) -> tuple[int, int]:
    name, info = item
    off = info.get("data_offsets") if isinstance(info, dict) else None
    if not (isinstance(off, list) and len(off) == 2 and all(isinstance(o, int) for o in off) and 0 <= off[0] <= off[1]):
        raise ProtocolError(f"tensor {name!r}: bad header entry {info!r}")
    return off[0], off[1]
