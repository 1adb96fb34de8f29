"""Core values that flow through a round (see ARCHITECTURE.md, "Core values").

``ModelState`` is an ordered mapping ``name -> numpy.ndarray``. Names travel with arrays so that
FedBN (keep BatchNorm local) and FedPer (keep the head local) are a filter on names.
"""

from __future__ import annotations

import math

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

ModelState = dict[str, np.ndarray]


def is_float(array: np.ndarray) -> bool:
    """True for floating-point arrays (weights); False for integer buffers (counters)."""
    return np.issubdtype(array.dtype, np.floating)


def state_nbytes(state: Mapping[str, np.ndarray]) -> int:
    """Bytes of raw tensor data in a state."""
    return int(sum(a.nbytes for a in state.values()))


def state_subset(state: Mapping[str, np.ndarray], names: Iterable[str] | None) -> ModelState:
    """The entries of ``state`` whose names are in ``names`` (all of them when ``names`` is None)."""
    if names is None:
        return dict(state)
    wanted = set(names)
    return {k: v for k, v in state.items() if k in wanted}


def state_sub(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> ModelState:
    """``a - b`` entry by entry over ``a``'s names (integer buffers subtract exactly)."""
    return {k: np.subtract(v, b[k]) for k, v in a.items()}


@dataclass(frozen=True)
class RoundConfig:
    """What one party is asked to do in one round. Plain and serialisable.

    Attributes:
        round: the round number (1-based) the instruction belongs to.
        epochs: local epochs over the party's data.
        lr: local learning rate.
        batch_size: local mini-batch size.
        optimizer: ``sgd`` or ``adam``.
        momentum: SGD momentum (0 for plain SGD).
        weight_decay: L2 penalty in the local optimizer.
        proximal_mu: FedProx proximal term weight (0 disables it).
        shared_names: names of the tensors the party sends back (None = all).
        extra: strategy- or pipeline-specific settings (plain JSON-able values).
    """

    round: int = 1
    epochs: int = 1
    lr: float = 0.05
    batch_size: int = 32
    optimizer: str = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    shared_names: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def with_(self, **changes: Any) -> "RoundConfig":
        """A copy with some fields changed."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["shared_names"] = list(self.shared_names) if self.shared_names is not None else None
        d["extra"] = dict(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RoundConfig":
        """Inverse of ``to_dict``."""
        d = dict(d)
        if d.get("shared_names") is not None:
            d["shared_names"] = tuple(d["shared_names"])
        return cls(**d)


@dataclass(frozen=True)
class Update:
    """One party's reply to a fit instruction.

    Attributes:
        delta: ``local - global`` for the shared names (or encoded tensors when ``codec`` is set).
        num_examples: examples the party trained on (the FedAvg weight).
        metrics: the party's training metrics (loss, accuracy, steps, ...).
        codec: metadata a server-side decoder needs (empty when the delta is plain).
    """

    delta: ModelState
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    codec: Mapping[str, Any] = field(default_factory=dict)

    def with_(self, **changes: Any) -> "Update":
        """A copy with some fields changed."""
        return replace(self, **changes)


@dataclass(frozen=True)
class EvalResult:
    """One party's (or the server's) evaluation of a model on some data.

    Attributes:
        loss: mean loss per example.
        accuracy: the ``accuracy`` metric when the app computes it (None otherwise).
        num_examples: examples evaluated (the weight when parties' results are combined).
        metrics: every metric the app asked for, by name (``accuracy`` included).
    """

    loss: float
    accuracy: float | None
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.accuracy is not None and "accuracy" not in self.metrics:
            object.__setattr__(self, "metrics", {**self.metrics, "accuracy": self.accuracy})

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (non-finite numbers become None)."""
        return {"loss": _finite(self.loss), "num_examples": self.num_examples,
                "metrics": {k: _finite(v) for k, v in self.metrics.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "EvalResult":
        """Inverse of ``to_json`` (None back to NaN)."""
        metrics = {str(k): float("nan") if v is None else float(v) for k, v in (d.get("metrics") or {}).items()}
        loss = d.get("loss")
        return cls(float("nan") if loss is None else float(loss), metrics.get("accuracy"), int(d["num_examples"]), metrics)


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


@dataclass(frozen=True)
class Task:
    """An instruction sent to one party through a transport.

    Attributes:
        party_id: the addressee.
        kind: ``fit`` or ``evaluate``.
        round: the round the task belongs to.
        state: the global model (or the part of it the party needs).
        config: the round configuration.
    """

    party_id: str
    kind: str
    round: int
    state: ModelState
    config: RoundConfig


@dataclass(frozen=True)
class Reply:
    """A party's answer to a ``Task``: an ``Update`` for fit, an ``EvalResult`` for evaluate,
    or a ``failure`` message when the party could not do it."""

    party_id: str
    kind: str
    round: int
    update: Update | None = None
    evaluation: EvalResult | None = None
    failure: str | None = None
    seconds: float = 0.0
    bytes_down: int = 0
    bytes_up: int = 0

    @property
    def ok(self) -> bool:
        """True when the party did what it was asked."""
        return self.failure is None
