"""Tasks and replies as (header, payload) pairs, and the checks every reply passes before use.

The coordinator trusts nothing a party sends: the reply must answer a task the party was given
(same party, same round, same kind), its tensors must be the names, shapes and dtypes that task
asked for, and every number must be finite. A reply that fails is refused with a
``ProtocolError`` that says what was expected and what came.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from pollen.errors import ProtocolError
from pollen.transport.rpc.tensors import Encoded, decode
from pollen.types import EvalResult, ModelState, Reply, RoundConfig, Task, Update

ALLOWED_DTYPES = {np.dtype(t) for t in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                                        "uint16", "bool")}  # uint16: bf16 bit patterns and top-k index gaps
MAX_EXAMPLES = 10**12


# ---------------------------------------------------------------- tasks (coordinator → party)
def task_header(task: Task) -> dict[str, Any]:
    """The JSON header of a task (the model goes in the payload)."""
    return {"type": "task", "party_id": task.party_id, "kind": task.kind, "round": task.round,
            "config": task.config.to_dict()}


def state_payload(state: Mapping[str, np.ndarray]) -> Encoded:
    """A model laid out for sending (safetensors layout; tensor order kept in the metadata)."""
    return Encoded(state, {"order": list(state)})


def task_from_message(header: Mapping[str, Any], payload: bytes | bytearray) -> Task:
    """Rebuild a task on the party side.

    Raises:
        ProtocolError: a header without the task fields, or a bad payload.
    """
    try:
        config = RoundConfig.from_dict(header["config"])
        party_id, kind, rnd = str(header["party_id"]), str(header["kind"]), int(header["round"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"task header lacks or has a bad field: {exc}") from None
    state, _ = decode(payload)
    return Task(party_id, kind, rnd, state, config)


# ---------------------------------------------------------------- replies (party → coordinator)
def reply_message(reply: Reply) -> tuple[dict[str, Any], Encoded]:
    """A party's reply as header and payload."""
    header: dict[str, Any] = {"type": "reply", "party_id": reply.party_id, "kind": reply.kind,
                              "round": reply.round, "failure": reply.failure, "seconds": reply.seconds}
    state: ModelState = {}
    if reply.update is not None:
        u = reply.update
        state = u.delta
        header.update(num_examples=u.num_examples, metrics=dict(u.metrics), codec=dict(u.codec))
    if reply.evaluation is not None:
        header["evaluation"] = reply.evaluation.to_json()
    return header, state_payload(state)


def check_reply(header: Mapping[str, Any], payload: bytes | bytearray, task: Task) -> Reply:
    """Validate a reply against the task it answers and rebuild it.

    Args:
        header: the reply's JSON header.
        payload: its tensor bytes.
        task: the task this party was given (same party, round and kind expected).

    Raises:
        ProtocolError: anything that does not fit, with what was expected and what came.
    """
    for key, want in (("party_id", task.party_id), ("kind", task.kind), ("round", task.round)):
        if header.get(key) != want:
            raise ProtocolError(f"reply {key} is {header.get(key)!r}, the open task has {want!r}")
    failure = header.get("failure")
    seconds = _number(header.get("seconds", 0.0), "seconds", low=0.0)
    if failure is not None:
        return Reply(task.party_id, task.kind, task.round, failure=str(failure)[:2000], seconds=seconds)
    update = evaluation = None
    if task.kind == "fit":
        delta, _ = decode(payload)
        _check_delta(delta, task, header.get("codec") or {})
        n = _number(header.get("num_examples"), "num_examples", low=1, high=MAX_EXAMPLES)
        metrics = header.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise ProtocolError(f"metrics must be an object, got {type(metrics).__name__}")
        metrics = {str(k): _number(v, f"metric {k!r}") for k, v in metrics.items()}
        update = Update(delta, int(n), metrics, dict(header.get("codec") or {}))
    elif task.kind == "evaluate":
        evaluation = _evaluation(header.get("evaluation"))
    else:  # extra task kinds (secure aggregation stages, …): tensors checked for dtype and finiteness
        delta, _ = decode(payload)
        _check_finite(delta)
        n = header.get("num_examples")
        update = Update(delta, int(_number(n, "num_examples", 0, MAX_EXAMPLES)), {}, dict(header.get("codec") or {})) if n is not None else None
    return Reply(task.party_id, task.kind, task.round, update=update, evaluation=evaluation, seconds=seconds)


MAX_METRICS = 64


def _evaluation(ev: Any) -> EvalResult:
    """An evaluate reply's ``{"loss", "num_examples", "metrics"}``: finite numbers (None for a metric
    undefined on the party's data, such as a one-class AUC), at most ``MAX_METRICS`` short names."""
    if not isinstance(ev, dict) or not isinstance(ev.get("metrics", {}), dict):
        raise ProtocolError(f"evaluate reply needs evaluation {{loss, num_examples, metrics}}, got {str(ev)[:200]!r}")
    metrics = ev.get("metrics") or {}
    if len(metrics) > MAX_METRICS or any(not isinstance(k, str) or not 0 < len(k) <= 64 for k in metrics):
        raise ProtocolError(f"evaluation metrics: at most {MAX_METRICS} names of 1-64 characters")
    clean = {k: None if v is None else _number(v, f"metric {k!r}") for k, v in metrics.items()}
    if "accuracy" in clean and clean["accuracy"] is not None:
        _number(clean["accuracy"], "accuracy", 0.0, 1.0)
    loss = ev.get("loss")
    return EvalResult.from_json({"loss": None if loss is None else _number(loss, "loss"), "metrics": clean,
                                 "num_examples": int(_number(ev.get("num_examples"), "examples", 0, MAX_EXAMPLES))})


def _number(value: Any, name: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProtocolError(f"{name} must be a finite number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ProtocolError(f"{name}={value!r} is outside [{low}, {high}]")
    return float(value)


def _check_delta(delta: ModelState, task: Task, codec: Mapping[str, Any]) -> None:
    if codec:  # an encoded update: its decoder checks the layout; here dtypes and finiteness
        _check_finite(delta)
        return
    model = _model_layout(task)
    names = list(task.config.shared_names) if task.config.shared_names is not None else list(model)
    if set(delta) != set(names):
        missing, extra = sorted(set(names) - set(delta))[:5], sorted(set(delta) - set(names))[:5]
        raise ProtocolError(f"update tensors do not match the model: missing {missing}, unexpected {extra}")
    for name in names:
        got, (shape, dtype) = delta[name], model[name]
        if got.shape != shape or got.dtype != dtype:
            raise ProtocolError(f"tensor {name!r}: expected {dtype}{list(shape)}, got {got.dtype}{list(got.shape)}")
    _check_finite(delta)


def _model_layout(task: Task) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Name -> (shape, dtype) of the model the task carried; a model sent compressed
    (``--downlink``: ``<name>::v`` keeps the shape, ``<name>::s`` holds scales) decodes to float32."""
    if not task.config.extra.get("downlink"):
        return {k: (v.shape, v.dtype) for k, v in task.state.items()}
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for key, arr in task.state.items():
        base, sep, part = key.rpartition("::")
        if not sep:
            out[key] = (arr.shape, arr.dtype)
        elif part == "v":
            out[base] = (arr.shape, np.dtype(np.float32))
    return out


def _check_finite(state: ModelState) -> None:
    for name, arr in state.items():
        if arr.dtype not in ALLOWED_DTYPES:
            raise ProtocolError(f"tensor {name!r} has dtype {arr.dtype}; allowed: {sorted(map(str, ALLOWED_DTYPES))}")
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise ProtocolError(f"tensor {name!r} contains NaN or Inf")
