"""A fit reply folded into the round's running sum chunk by chunk, as its stream arrives.

For a model of gigabytes the coordinator cannot assemble every party's upload before aggregating
(N × the model's size). When the round streams (``pollen.server.streaming``) and the update needs
no server-side decoding (no codec), the gRPC service hands each upload's chunks to a
:class:`FoldingReader` instead of assembling them: the safetensors header is checked against the
task (names, shapes, dtypes) before a byte of tensor data is used, each piece of a tensor is
checked finite before it is folded, and elements cut between two chunks are carried over.

What cannot be undone: a stream that breaks (truncated, a NaN in a later chunk) after part of it was
folded. The sum then holds part of that party's update, so the round is spoiled: it is not
aggregated, and the history says which party's stream broke and why.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from pollen.errors import ProtocolError, StrategyError
from pollen.server.replies import check_metrics
from pollen.transport.rpc.messages import MAX_EXAMPLES, _model_layout, _number
from pollen.transport.rpc.tensors import DTYPES, MAX_HEADER
from pollen.types import Task, Update


class FoldingReader:
    """Reads one fit reply's tensor payload piece by piece into ``sink`` (a ``StreamingMean``).

    Args:
        header: the reply's JSON header (party, round, kind already checked by the service).
        task: the task it answers.
        sink: the running sum (``add_piece``, ``commit``, ``spoil``, and a ``lock``).
        total: the payload size the stream declared.

    Raises:
        ProtocolError: a header that does not fit (before anything is folded).
    """

    def __init__(self, header: Mapping[str, Any], task: Task, sink: Any, total: int) -> None:
        if header.get("failure") is not None or header.get("codec"):
            raise ProtocolError("not a plain fit reply")  # the caller assembles it the usual way
        self.task, self.sink, self.total = task, sink, total
        self.num_examples = int(_number(header.get("num_examples"), "num_examples", low=1, high=MAX_EXAMPLES))
        metrics = header.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise ProtocolError(f"metrics must be an object, got {type(metrics).__name__}")
        self.metrics = check_metrics(metrics)  # the coordinator's rules (names, bounds), before anything is folded
        self.seconds = _number(header.get("seconds", 0.0), "seconds", low=0.0)
        self.weight = sink.weight_of(self.num_examples)
        self._head = bytearray()
        self._segments: list[tuple[str, int, int, np.dtype, tuple[int, ...]]] | None = None
        self._pos = 0  # bytes of the payload read so far
        self._seg = 0
        self._carry = b""
        self.folded = False
        self.nbytes = 0

    def feed(self, data: bytes) -> None:
        """The next chunk's bytes."""
        view = memoryview(data)
        if self._pos + len(view) > self.total:
            raise ProtocolError(f"stream carries more than the {self.total} bytes it declared")
        if self._segments is None:
            need = 8 if len(self._head) < 8 else 8 + struct.unpack("<Q", self._head[:8])[0]
            while self._segments is None and len(view):
                take = view[: max(0, need - len(self._head))]
                self._head += take
                self._pos += len(take)
                view = view[len(take):]
                if len(self._head) == 8:
                    (n,) = struct.unpack("<Q", self._head)
                    if n > min(MAX_HEADER, self.total - 8):
                        raise ProtocolError(f"tensor payload header claims {n} bytes (truncated or garbage)")
                    need = 8 + n
                if len(self._head) == need and need > 8:
                    self._parse_header(bytes(self._head[8:]))
        if len(view):
            self._fold(view)

    def finish(self) -> Update:
        """The update without its delta (already folded), once the whole stream came.

        Raises:
            ProtocolError: a truncated stream.
        """
        if self._pos != self.total or self._segments is None or self._seg < len(self._segments) or self._carry:
            raise ProtocolError(f"truncated stream: {self._pos} of {self.total} declared bytes arrived")
        try:
            self.sink.commit(self.weight, self.nbytes, self.task.party_id)
        except StrategyError as exc:
            raise ProtocolError(str(exc)) from None
        return Update({}, self.num_examples, self.metrics, {})

    # ------------------------------------------------------------ internals
    def _parse_header(self, raw: bytes) -> None:
        try:
            header = json.loads(raw)
        except ValueError as exc:
            raise ProtocolError(f"tensor payload header is not valid JSON: {exc}") from None
        if not isinstance(header, dict):
            raise ProtocolError("tensor payload header must be a JSON object")
        header.pop("__metadata__", None)
        model = _model_layout(self.task)
        shared = self.task.config.shared_names
        names = list(shared) if shared is not None else list(model)
        if set(header) != set(names):
            missing, extra = sorted(set(names) - set(header))[:5], sorted(set(header) - set(names))[:5]
            raise ProtocolError(f"update tensors do not match the model: missing {missing}, unexpected {extra}")
        segments = []
        for name, info in header.items():
            shape, dtype = model[name]
            if not isinstance(info, dict) or DTYPES.get(info.get("dtype")) is None:
                raise ProtocolError(f"tensor {name!r}: bad header entry {info!r}")
            got = np.dtype(DTYPES[info["dtype"]])
            off = info.get("data_offsets")
            if list(info.get("shape", [])) != list(shape) or got != dtype:
                raise ProtocolError(f"tensor {name!r}: expected {dtype}{list(shape)}, got {got}{info.get('shape')}")
            if not (isinstance(off, list) and len(off) == 2 and all(isinstance(o, int) for o in off)):
                raise ProtocolError(f"tensor {name!r}: bad data_offsets {off!r}")
            segments.append((name, off[0], off[1], got, tuple(shape)))
        segments.sort(key=lambda s: s[1])
        end = 0
        for name, begin, stop, dtype, shape in segments:
            if begin != end or stop - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise ProtocolError(f"tensor {name!r}: data_offsets [{begin}, {stop}] do not tile the payload")
            end = stop
        if 8 + len(raw) + end != self.total:
            raise ProtocolError(f"tensor payload declares {self.total} bytes, its header {8 + len(raw) + end}")
        self._data_start = 8 + len(raw)
        self._segments = [s for s in segments if s[2] > s[1]]

    def _fold(self, view: memoryview) -> None:
        assert self._segments is not None
        while len(view):
            if self._seg >= len(self._segments):
                raise ProtocolError("tensor payload has bytes after its last tensor")
            name, begin, stop, dtype, shape = self._segments[self._seg]
            at = self._pos - self._data_start  # offset in the data section
            take = view[: stop - at]
            self._pos += len(take)
            view = view[len(take):]
            carried = len(self._carry)
            raw = self._carry + bytes(take) if carried else take
            usable = len(raw) - len(raw) % dtype.itemsize
            self._carry = bytes(raw[usable:])
            if usable:
                first = (at - begin - carried) // dtype.itemsize  # raw starts on an element boundary
                values = np.frombuffer(raw[:usable], dtype=dtype)
                if np.issubdtype(dtype, np.floating) and not np.isfinite(values).all():
                    raise ProtocolError(f"tensor {name!r} contains NaN or Inf")
                try:
                    self.sink.add_piece(name, first, values, self.weight, shape, self.task.party_id)
                except StrategyError as exc:
                    raise ProtocolError(str(exc)) from None
                self.folded = True
                self.nbytes += usable
            if self._pos - self._data_start == stop:
                if self._carry:
                    raise ProtocolError(f"tensor {name!r}: its bytes end inside an element")
                self._seg += 1
