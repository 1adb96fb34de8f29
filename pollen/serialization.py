"""Tensors to bytes and back without pickle: safetensors (raw little-endian buffers with dtype and
shape in a JSON header) plus a JSON metadata string. Used by the process pool, checkpoints and
the gRPC transport."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from pollen.errors import ProtocolError
from pollen.types import EvalResult, ModelState, Reply, RoundConfig, Task, Update

_META_KEY = "pollen"


def state_to_bytes(state: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> bytes:
    """Serialise a state and JSON-able metadata."""
    arrays = {k: np.asarray(v, order="C") for k, v in state.items()}
    return _st_save(arrays, metadata={_META_KEY: json.dumps(meta or {})})


def read_metadata(data: bytes) -> dict[str, Any]:
    """The metadata of ``state_to_bytes`` output, without reading the tensors."""
    if len(data) < 8:
        raise ProtocolError(f"tensor payload too short ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ProtocolError("tensor payload header is longer than the payload (truncated?)")
    try:
        header = json.loads(data[8 : 8 + n])
        return json.loads(header.get("__metadata__", {}).get(_META_KEY, "{}"))
    except (ValueError, AttributeError) as exc:
        raise ProtocolError(f"tensor payload header is not valid JSON: {exc}") from exc


def state_from_bytes(data: bytes) -> tuple[ModelState, dict[str, Any]]:
    """Inverse of ``state_to_bytes``.

    Raises:
        ProtocolError: the bytes are not a valid payload.
    """
    meta = read_metadata(data)
    try:
        state = _st_load(bytes(data))
    except Exception as exc:  # safetensors raises its own error types
        raise ProtocolError(f"invalid tensor payload: {exc}") from exc
    order = meta.get("order")
    if order:
        state = {k: state[k] for k in order if k in state}
    return state, meta


def task_to_bytes(task: Task) -> bytes:
    """A task as bytes (config and routing in the metadata)."""
    meta = {"party_id": task.party_id, "kind": task.kind, "round": task.round,
            "config": task.config.to_dict(), "order": list(task.state)}
    return state_to_bytes(task.state, meta)


def task_from_bytes(data: bytes) -> Task:
    """Inverse of ``task_to_bytes``."""
    state, m = state_from_bytes(data)
    return Task(m["party_id"], m["kind"], int(m["round"]), state, RoundConfig.from_dict(m["config"]))


def reply_to_bytes(reply: Reply) -> bytes:
    """A reply as bytes."""
    state, meta = _reply_parts(reply)
    return state_to_bytes(state, meta)


_HEADER_FIXED: dict[tuple, int] = {}  # tensor layout -> header bytes besides the metadata string


def reply_nbytes(reply: Reply) -> int:
    """``len(reply_to_bytes(reply))`` without serialising the tensors (the in-process transports'
    byte accounting; a round of 100 replies of a 6 MB model would otherwise copy 600 MB).

    The safetensors header depends on the tensors' names, dtypes and shapes, and on the metadata
    string, which is JSON-escaped into it: one real serialisation per layout gives the rest.
    """
    state, meta = _reply_parts(reply)
    text = json.dumps(meta)
    layout = tuple((k, str(np.asarray(v).dtype), np.shape(v)) for k, v in state.items())
    fixed = _HEADER_FIXED.get(layout)
    if fixed is None:
        data = state_to_bytes(state, meta)
        (n,) = struct.unpack("<Q", data[:8])
        fixed = len(bytes(data[8 : 8 + n]).rstrip(b" ")) - _escaped(text)
        if len(_HEADER_FIXED) > 64:
            _HEADER_FIXED.clear()
        _HEADER_FIXED[layout] = fixed
    header = fixed + _escaped(text)
    return 8 + header + (-header % 8) + sum(np.asarray(v).nbytes for v in state.values())


def _escaped(text: str) -> int:
    """Length of ``text`` as a JSON string body (``"`` and ``\\`` escaped; ``json.dumps`` output is ASCII)."""
    return len(text) + text.count('"') + text.count("\\")


def _reply_parts(reply: Reply) -> tuple[ModelState, dict[str, Any]]:
    meta: dict[str, Any] = {"party_id": reply.party_id, "kind": reply.kind, "round": reply.round,
                            "failure": reply.failure, "seconds": reply.seconds}
    state: ModelState = {}
    if reply.update is not None:
        u = reply.update
        state = u.delta
        meta.update(num_examples=u.num_examples, metrics=dict(u.metrics), codec=dict(u.codec), order=list(state))
    if reply.evaluation is not None:
        meta["evaluation"] = reply.evaluation.to_json()
    return state, meta


def reply_from_bytes(data: bytes) -> Reply:
    """Inverse of ``reply_to_bytes``."""
    state, m = state_from_bytes(data)
    update = None
    if "num_examples" in m:
        update = Update(state, int(m["num_examples"]), m.get("metrics", {}), m.get("codec", {}))
    evaluation = EvalResult.from_json(m["evaluation"]) if m.get("evaluation") else None
    return Reply(m["party_id"], m["kind"], int(m["round"]), update=update, evaluation=evaluation,
                 failure=m.get("failure"), seconds=float(m.get("seconds", 0.0)))
