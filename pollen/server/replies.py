"""What a party may send back, checked against what the coordinator asked for (ARCHITECTURE.md, "Trust").

Every transport's replies pass here before the round uses them, so the rules hold in simulation
and deployment alike (gRPC checks the wire format first, ``pollen.transport.rpc.messages``):

- ``num_examples`` is a whole number in ``[1, MAX_EXAMPLES]``; at most ``MAX_METRICS`` metrics, each a
  name of 1-64 printable characters and a finite number within ``MAX_ABS`` (tighter bounds for the
  metrics the coordinator reads: ``steps`` in ``[0, MAX_STEPS]``, accuracies and clip bits in ``[0, 1]``, ε ≥ 0);
  names the coordinator writes itself (``staleness``) are refused.
- Codec metadata names exactly the codecs the configured pipeline produces; a codec's tensor
  metadata (shape, dtype) and a masked update's layout must be the model's before any decoder
  allocates from them.
- After decoding (and after a secure sum or a decryption), the update holds exactly the tensors
  the party was asked for, with the shapes of the model it was sent, a dtype of the same kind
  (float for float, the exact integer type for integer buffers), and finite values.

A reply that fails costs its party the round (the reason goes to the history), never the
coordinator its life. Party metrics go into the round record under ``party_metrics`` and never
over the round's own fields; the privacy figures parties account for themselves (DP-SGD, local
DP) are lifted to the round's ``epsilon…`` fields only when the run asked parties for them.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field as dc_field
from typing import Any

import numpy as np

from pollen.errors import ProtocolError
from pollen.strategy.fedbuff import STALENESS_KEY
from pollen.types import EvalResult, ModelState, RoundConfig, Update

MAX_EXAMPLES = 10**12
MAX_METRICS = 64
MAX_STEPS = 1e9  # local steps a party may claim (FedNova and SCAFFOLD read them)
MAX_ABS = 1e15  # any metric; far beyond a real loss or count, small enough that weighted sums stay exact-ish
MAX_TEXT = 300  # characters of a party's failure message kept
PARTY_METRICS = "party_metrics"  # the round record's field holding the parties' mean metrics
_NAME = re.compile(r"^[^\x00-\x1f\x7f-\x9f]{1,64}$")  # 1-64 printable characters
_UNIT = ("train_accuracy", "clip_bit", "secagg_clipped")  # metrics in [0, 1]
RESERVED = frozenset({STALENESS_KEY})  # written into Update.metrics by the coordinator itself
# What a DP-SGD party reports about its own budget (pollen.privacy.dpsgd.dp_fit).
DP_SGD_REPORTS = frozenset({"epsilon", "epsilon_record", "epsilon_record_rdp", "noise_multiplier"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # control characters (terminal escapes, fake log lines)


@dataclass(frozen=True)
class Expected:
    """What one round's fit replies may contain.

    Attributes:
        layout: name -> (shape, dtype) of every tensor the party was sent (model + strategy state).
        names: the tensors a party sends back (the round's shared names, else all of ``layout``).
        codecs: the codec keys the pipeline's steps write into ``Update.codec``.
        masked: the codec of a masking step (secure aggregation, HE), whose updates stay encoded
            until ``combine``; None without one.
        privacy: the party-reported metrics lifted into the round's fields (ε of DP-SGD, local DP).
        riders: name -> (shape, dtype) of tensors a step adds to the masked vector and takes out of
            the sum again (adaptive clipping's bit under SecAgg+: ``pollen.privacy.distributed``).
    """

    layout: Mapping[str, tuple[tuple[int, ...], np.dtype]]
    names: frozenset[str]
    codecs: frozenset[str]
    masked: str | None
    privacy: frozenset[str]
    riders: Mapping[str, tuple[tuple[int, ...], np.dtype]] = dc_field(default_factory=dict)


def expected(sent: Mapping[str, np.ndarray], config: RoundConfig, pipeline: Any) -> Expected:
    """The :class:`Expected` of a round that sent ``sent`` (before downlink compression) with ``config``.

    Args:
        sent: the state the parties train from (the model, plus strategy state such as SCAFFOLD's c).
        config: the round configuration sent with it.
        pipeline: the run's update pipeline (``pollen.transforms.base.Pipeline``).
    """
    layout = {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in sent.items()}
    names = frozenset(config.shared_names) if config.shared_names is not None else frozenset(layout)
    steps = list(pipeline.steps)
    masks = [s.name for s in steps if s.stage == "mask"]
    codecs = frozenset(masks) if masks else frozenset(s.name for s in steps if s.stage == "compress" and not s.linear)
    privacy: set[str] = set(DP_SGD_REPORTS) if config.extra.get("dp_sgd") else set()
    riders: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    for s in steps:
        privacy |= set(getattr(s, "party_privacy", ()))
        riders.update(getattr(s, "riders", {}) if masks else {})
    return Expected(layout, names & frozenset(layout), codecs, masks[-1] if masks else None, frozenset(privacy), riders)


# ---------------------------------------------------------------- before decoding
def check_update(update: Update, exp: Expected) -> Update:
    """A fit reply's update before the pipeline decodes it: counts, metrics and codec metadata.

    Returns:
        The update with ``num_examples`` as an int and metrics as floats.

    Raises:
        ProtocolError: the first field that does not fit, with what was expected and what came.
    """
    n = whole(update.num_examples, "num_examples", 1, MAX_EXAMPLES)
    metrics = check_metrics(update.metrics)
    codec = update.codec if update.codec is not None else {}
    if not isinstance(codec, Mapping):
        raise ProtocolError(f"codec metadata must be an object, got {type(codec).__name__}")
    if set(codec) != set(exp.codecs):
        raise ProtocolError(f"the update is encoded with codecs {sorted(map(str, codec))}; this run's pipeline "
                            f"produces {sorted(exp.codecs) or 'none'}")
    for key, meta in codec.items():
        if key == exp.masked:
            _check_mask_layout(key, meta, exp)
        else:
            _check_codec_tensors(key, meta, exp)
    return update.with_(num_examples=n, metrics=metrics)


def check_metrics(metrics: Any) -> dict[str, float]:
    """A fit reply's metrics: names, count, finite values within their bounds.

    Raises:
        ProtocolError: naming the metric and its bound.
    """
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise ProtocolError(f"metrics must be an object, got {type(metrics).__name__}")
    if len(metrics) > MAX_METRICS:
        raise ProtocolError(f"{len(metrics)} metrics; at most {MAX_METRICS} are accepted")
    out: dict[str, float] = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ProtocolError(f"metric name {str(name)[:40]!r}: expected 1-64 printable characters")
        if name in RESERVED:
            raise ProtocolError(f"metric {name!r} is written by the coordinator, not by parties")
        if name.startswith("epsilon"):  # a budget may be spent beyond measure (ε = inf), never negative
            out[name] = number(value, f"metric {name!r}", 0.0, math.inf, allow_inf=True)
        elif name in _UNIT:
            out[name] = number(value, f"metric {name!r}", 0.0, 1.0)
        elif name == "steps":
            out[name] = number(value, "metric 'steps'", 0.0, MAX_STEPS)
        else:
            out[name] = number(value, f"metric {name!r}", -MAX_ABS, MAX_ABS)
    return out


def _check_codec_tensors(key: str, meta: Any, exp: Expected) -> None:
    """A compression codec's per-tensor metadata: only asked-for tensors, with the model's shapes."""
    if not isinstance(meta, Mapping):
        raise ProtocolError(f"codec {key!r} metadata must be an object of tensors, got {type(meta).__name__}")
    for name, m in meta.items():
        if name not in exp.names:
            raise ProtocolError(f"codec {key!r} encodes tensor {str(name)[:60]!r}, which this round did not ask for")
        shape, dtype = exp.layout[name]
        if not isinstance(m, Mapping) or m.get("shape") != list(shape):
            got = m.get("shape") if isinstance(m, Mapping) else m
            raise ProtocolError(f"codec {key!r} tensor {name!r}: shape {str(got)[:60]}, the model's is {list(shape)}")
        if _kind(m.get("dtype")) != _kind(dtype):
            raise ProtocolError(f"codec {key!r} tensor {name!r}: dtype {str(m.get('dtype'))[:20]!r}, the model's is {dtype}")


def _check_mask_layout(key: str, meta: Any, exp: Expected) -> None:
    """A masked or encrypted update's layout (what its sum unflattens into) must be the model's."""
    layout = meta.get("layout") if isinstance(meta, Mapping) else None
    try:
        names, shapes, dtypes = list(layout["names"]), list(layout["shapes"]), list(layout["dtypes"])
    except (TypeError, KeyError):
        raise ProtocolError(f"codec {key!r}: a layout {{names, shapes, dtypes}} is required") from None
    if (len(names) != len(shapes) or len(names) != len(dtypes) or set(names) != exp.names | set(exp.riders)
            or len(set(names)) != len(names)):
        raise ProtocolError(f"codec {key!r}: the layout's tensors are not the ones this round asked for")
    for name, shape, dtype in zip(names, shapes, dtypes):
        want_shape, want_dtype = exp.riders[name] if name in exp.riders else exp.layout[name]
        if shape != list(want_shape) or _kind(dtype) != _kind(want_dtype):
            raise ProtocolError(f"codec {key!r}: layout of {name!r} is {str(dtype)[:20]}{str(shape)[:60]}, "
                                f"the model's is {want_dtype}{list(want_shape)}")


# ---------------------------------------------------------------- after decoding
def check_decoded(update: Update, exp: Expected) -> Update:
    """A decoded update: the asked-for tensors, the model's shapes, finite values.

    Updates of a masking step stay encoded until ``combine`` (checked by :func:`check_combined`).

    Raises:
        ProtocolError: what does not fit.
    """
    if exp.masked is not None:
        return update
    if update.codec:
        raise ProtocolError(f"the update is still encoded after decoding (codecs {sorted(update.codec)})")
    check_tensors(update.delta, exp, "decoded update")
    return update


def check_combined(updates: Sequence[Update], exp: Expected) -> None:
    """What a secure sum or a decryption handed the aggregator fits the model too.

    Raises:
        ProtocolError: what does not fit.
    """
    for u in updates:
        if exp.masked is not None:
            check_tensors(u.delta, exp, f"sum recovered by {exp.masked!r}")


def check_tensors(delta: Mapping[str, np.ndarray], exp: Expected, what: str) -> None:
    """Exactly ``exp.names``, each of the model's shape and dtype kind, all finite.

    Raises:
        ProtocolError: missing or unexpected tensors, a wrong shape or dtype, NaN or Inf.
    """
    if not isinstance(delta, Mapping) or set(delta) != exp.names:
        got = set(delta) if isinstance(delta, Mapping) else set()
        missing, extra = sorted(exp.names - got)[:5], sorted(map(str, got - exp.names))[:5]
        raise ProtocolError(f"{what} tensors do not match the model: missing {missing}, unexpected {extra}")
    for name, arr in delta.items():
        shape, dtype = exp.layout[name]
        if isinstance(arr, np.generic):  # a 0-d difference comes out of numpy as a scalar
            arr = np.asarray(arr)
        if not isinstance(arr, np.ndarray) or arr.shape != shape or _kind(arr.dtype) != _kind(dtype):
            got = f"{arr.dtype}{list(arr.shape)}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise ProtocolError(f"{what}: tensor {name!r} is {got}, the model's is {dtype}{list(shape)}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ProtocolError(f"{what}: tensor {name!r} contains NaN or Inf")


def _kind(dtype: Any) -> str:
    """``float`` for any floating dtype, else the exact dtype (an integer buffer keeps its type)."""
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError):
        return f"invalid {str(dtype)[:20]}"
    return "float" if dt.kind == "f" else dt.str


# ---------------------------------------------------------------- evaluation replies
def check_evaluation(ev: Any) -> EvalResult:
    """A federated-evaluation reply: example count in range, finite (or undefined) metrics.

    A metric may be NaN (undefined on the party's data, a one-class AUC) but not infinite; names
    follow the metric rules and ``loss`` is not a metric name (it is the result's own field).

    Raises:
        ProtocolError: what does not fit.
    """
    if not isinstance(ev, EvalResult):
        raise ProtocolError(f"an evaluate reply needs an evaluation, got {type(ev).__name__}")
    n = whole(ev.num_examples, "evaluation num_examples", 0, MAX_EXAMPLES)
    metrics = ev.metrics if isinstance(ev.metrics, Mapping) else None
    if metrics is None or len(metrics) > MAX_METRICS:
        raise ProtocolError(f"evaluation metrics: an object of at most {MAX_METRICS} entries")
    clean: dict[str, float] = {}
    for name, v in metrics.items():
        if not isinstance(name, str) or not _NAME.match(name) or name == "loss" or name.endswith("_parties"):
            raise ProtocolError(f"evaluation metric name {str(name)[:40]!r} is not allowed")
        clean[name] = _maybe_nan(v, f"evaluation metric {name!r}")
        if name == "accuracy" and not math.isnan(clean[name]):
            number(clean[name], "evaluation accuracy", 0.0, 1.0)
    loss = _maybe_nan(ev.loss, "evaluation loss")
    return EvalResult(loss, clean.get("accuracy"), n, clean)


def _maybe_nan(v: Any, what: str) -> float:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return float("nan")
    return number(v, what, -MAX_ABS, MAX_ABS)


# ---------------------------------------------------------------- numbers and text
def number(value: Any, what: str, low: float, high: float, allow_inf: bool = False) -> float:
    """``value`` as a float in ``[low, high]``.

    Raises:
        ProtocolError: not a real number (bools and strings are not), NaN, Inf (unless ``allow_inf``), or out of range.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise ProtocolError(f"{what} must be a number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ProtocolError(f"{what} must be finite, got {v}")
    if not low <= v <= high:
        raise ProtocolError(f"{what}={v:g} is outside [{low:g}, {high:g}]")
    return v


def whole(value: Any, what: str, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]`` (a float with a whole value is accepted).

    Raises:
        ProtocolError: not a whole number in range.
    """
    v = number(value, what, low, high)
    if v != int(v):
        raise ProtocolError(f"{what} must be a whole number, got {v:g}")
    return int(v)


def clean_text(text: Any, limit: int = MAX_TEXT) -> str:
    """A party's free text (a failure message) safe for logs, terminals and history: one line,
    no control characters, at most ``limit`` characters."""
    flat = _CONTROL.sub(" ", str(text))
    flat = " ".join(flat.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# ---------------------------------------------------------------- the round record
def party_metrics(updates: Sequence[Update]) -> dict[str, float]:
    """Example-weighted mean of the parties' metrics; the largest value for privacy spent (names
    starting with ``epsilon``: the guarantee is the worst party's). Coordinator-written names
    (``staleness``) are left out."""
    n = sum(u.num_examples for u in updates) or 1
    keys = {k for u in updates for k, v in u.metrics.items() if isinstance(v, (int, float)) and k not in RESERVED}
    out = {}
    for k in sorted(keys):
        if k.startswith("epsilon"):
            out[k] = max(float(u.metrics[k]) for u in updates if k in u.metrics)
        else:
            out[k] = sum(float(u.metrics.get(k, 0.0)) * u.num_examples for u in updates) / n
    return out


def round_fields(updates: Sequence[Update], exp: Expected) -> dict[str, Any]:
    """The round record's fields from the aggregated updates: ``party_metrics`` (their own namespace)
    and the privacy figures the run asked parties to account for (``epsilon`` … as the worst party's)."""
    means = party_metrics(updates)
    out: dict[str, Any] = {PARTY_METRICS: means}
    out.update({k: means[k] for k in sorted(exp.privacy) if k in means})
    return out
