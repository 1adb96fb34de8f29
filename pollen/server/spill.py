"""A big model's global state kept on disk, not in memory, while its round's updates are folded.

A streamed round (``pollen.server.streaming.StreamingMean``) holds one running sum of the model's
size. The global model the parties download is a second one, and it is only read during the round:
once to stream it to every party, once at the end (``x + Σwᵢ Δᵢ / Σwᵢ``). ``spill`` writes it to an
anonymous file (``O_TMPFILE``: no name, gone when closed or when the process dies) and puts
:class:`SpilledTensor` placeholders in the state in place of its arrays, so the arrays are freed;
the gRPC transport streams the tensors to parties from the file (``FileSpan``: positional reads of
one chunk at a time, never a memory map whose touched pages would count as the process's memory),
and ``streaming.step`` adds the global into the sum's buffers chunk by chunk from it
(:meth:`SpilledTensor.add_to`), so the sum's buffers become the new global. The coordinator then
holds one model (the sum) during the round instead of two.

The file lives on disk (``directory``: the run's folder, else the temp directory —
``TMPDIR``; a tmpfs there would keep it in memory), so the kernel's page cache may hold its pages
for a while: that memory is the kernel's to reclaim, not the coordinator's heap.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np

from pollen.errors import RunError
from pollen.transport.rpc.tensors import FileSpan

READ_BYTES = 8 * 1024 * 1024  # bytes read at a time when the global is added back (the scratch buffer)


class SpilledTensor:
    """A tensor of the global model that lives in the round's spill file (shape, dtype and size as
    an array's; no data in memory). Reading it as an array is an error: code that needs the values
    reads them from the file (:meth:`add_to`, :meth:`load`)."""

    __slots__ = ("name", "shape", "dtype", "file_span")

    def __init__(self, name: str, shape: tuple[int, ...], dtype: np.dtype, span: FileSpan) -> None:
        self.name, self.shape, self.dtype, self.file_span = name, shape, dtype, span

    @property
    def nbytes(self) -> int:
        return self.file_span.nbytes

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise RunError(f"tensor {self.name!r} of the global model is on disk during this round (a streamed big "
                       "model); read it with SpilledTensor.load() or add_to()")

    def load(self) -> np.ndarray:
        """The tensor read back into a new array."""
        out = np.empty(self.shape, self.dtype)
        self._read_into(memoryview(out.reshape(-1)).cast("B"), 0)
        return out

    def add_to(self, dest: np.ndarray) -> None:
        """``dest += self`` element by element, reading ``READ_BYTES`` of the file at a time (the same
        float operations as ``dest += array``, so the result is bit for bit the same).

        Raises:
            RunError: ``dest`` is not a writable C-contiguous array of this tensor's shape and dtype.
        """
        if dest.shape != self.shape or dest.dtype != self.dtype or not dest.flags.c_contiguous or not dest.flags.writeable:
            raise RunError(f"tensor {self.name!r}: cannot add the spilled global into {dest.dtype}{list(dest.shape)}")
        flat = dest.reshape(-1)
        step = max(1, READ_BYTES // max(self.dtype.itemsize, 1))
        scratch = np.empty(min(step, flat.size), self.dtype)
        for start in range(0, flat.size, step):
            n = min(step, flat.size - start)
            part = scratch[:n]
            self._read_into(memoryview(part).cast("B"), start * self.dtype.itemsize)
            flat[start : start + n] += part

    def _read_into(self, buf: memoryview, start: int) -> None:
        span, done = self.file_span, 0
        fd = span.file.fileno()
        while done < len(buf):
            got = os.preadv(fd, [buf[done:]], span.offset + start + done)
            if got <= 0:
                raise RunError(f"the spill file of tensor {self.name!r} ended early (was it truncated?)")
            done += got


class Spill:
    """The round's global tensors in one anonymous file, raw little-endian, one after another.

    Args:
        tensors: the tensors to write (name -> array).
        directory: where the file goes (None: the temp directory).

    Raises:
        RunError: the file cannot be written (disk full, read-only folder), in one line that names it.
    """

    def __init__(self, tensors: Mapping[str, np.ndarray], directory: str | Path | None = None) -> None:
        where = str(directory) if directory is not None else tempfile.gettempdir()
        try:
            self._file = tempfile.TemporaryFile(dir=where)  # O_TMPFILE on Linux: never visible, gone on close
            self.fd = self._file.fileno()  # held open by every tensor's span until the last one goes
            self.tensors: dict[str, SpilledTensor] = {}
            offset = 0
            for name, value in tensors.items():
                arr = np.asarray(value, dtype=np.dtype(value.dtype).newbyteorder("<"), order="C")  # 0-d stays 0-d
                span = FileSpan(self._file, offset, arr.nbytes)
                view = memoryview(arr.reshape(-1)).cast("B") if arr.nbytes else memoryview(b"")
                done = 0
                while done < len(view):
                    done += os.pwrite(self.fd, view[done:], offset + done)
                self.tensors[name] = SpilledTensor(name, tuple(arr.shape), arr.dtype, span)
                offset += arr.nbytes
            self.nbytes = offset
        except OSError as exc:
            raise RunError(f"cannot write the round's model to {where} ({exc.strerror or exc}); free disk space there "
                           "or point TMPDIR elsewhere, or use --stream-aggregate off") from None

    def close(self) -> None:
        """Drop the file now (its space and page cache are freed; a stream still reading it fails).
        The round loop does not: the file goes with the last placeholder or download reading it."""
        self._file.close()


def spill(state: MutableMapping[str, Any], names: list[str], directory: str | Path | None = None) -> Spill:
    """Write ``state``'s tensors ``names`` to a :class:`Spill` and put their placeholders in
    ``state`` in place of the arrays (which are freed unless something else holds them)."""
    s = Spill({k: state[k] for k in names}, directory)
    for k in names:
        state[k] = s.tensors[k]
    return s


def held_bytes(state: Mapping[str, Any]) -> int:
    """Bytes of ``state`` held in memory (spilled tensors count 0)."""
    return int(sum(0 if isinstance(v, SpilledTensor) else np.asarray(v).nbytes for v in state.values()))


def restore(state: MutableMapping[str, Any]) -> None:
    """Read every spilled tensor of ``state`` back into memory (in place)."""
    for k, v in list(state.items()):
        if isinstance(v, SpilledTensor):
            state[k] = v.load()


def spill_round(state: MutableMapping[str, Any], sent: Mapping[str, Any], optimizer: Any, transport: Any,
                directory: str | Path | None) -> Spill | None:
    """Spill the round's global (``spill``) when nothing needs it in memory until the step: the round
    streams in place, chunk by chunk (the caller checked), the transport streams tasks from a file
    (``serves_files``), the parties get the global's own arrays (no downlink compression, nothing
    added such as SCAFFOLD's c) and the server step is the plain ``x + lr·Δ``
    (``streaming.step``); else None, and the round keeps the global in memory."""
    from pollen.strategy.base import ServerOptimizer

    if not getattr(transport, "serves_files", False) or type(optimizer) is not ServerOptimizer:
        return None
    if not sent or any(k not in state or state[k] is not v or not isinstance(v, np.ndarray) for k, v in sent.items()):
        return None
    return spill(state, list(sent), directory)
