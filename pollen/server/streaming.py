"""Streaming aggregation: fold each update into one running sum as it arrives (FedJAX style).

The round loop otherwise holds every party's decoded update until all have come, which for a
model of gigabytes is N × its size. With streaming the coordinator holds one accumulator in the
model's dtype (plus the update being folded): ``Σ wᵢ Δᵢ`` and ``Σ wᵢ``, divided when the round's
replies are in. What is streamable:

- ``WeightedMean`` (FedAvg, FedProx, FedAvgM, FedAdam/FedYogi/FedAdagrad, SCAFFOLD's unweighted mean):
  the server optimizer then steps on the mean exactly as before;
- SecAgg+'s masked sum already folds each masked vector into its ring accumulator as it arrives
  (``pollen.privacy.secagg.protocol``), so it runs its own path (``combine``);
- rules that need every update at once (median, trimmed mean, Krum, …) cannot stream: they keep the
  in-memory path, and ``--stream-aggregate on`` with them is refused at start-up.

Two ways to fold:

- ``OrderedFold`` (``--stream-aggregate auto`` below ``AUTO_BYTES``): each update is folded with the
  aggregator's own ``add`` in party order as soon as the replies before it in that order are in;
  one that arrives early waits for them. The sum is the in-memory path's, bit for bit (the same
  additions in the same order). Inline simulation asks the parties in id order, so it holds one
  update at a time instead of the round's N (W1: 10 replies, 66 MB); a transport whose replies come
  out of order holds at worst what the in-memory path holds.
- ``StreamingMean`` (``on``, or ``auto`` above ``AUTO_BYTES``): folded in arrival order, piece by
  piece where the transport can (gRPC folds each upload chunk by chunk), in the model's dtype
  (float32): the sums may differ from the in-memory path in the last bits.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pollen.errors import ConfigError, StrategyError
from pollen.types import ModelState, Update, is_float, state_nbytes

AUTO_BYTES = 256 * 1024 * 1024  # --stream-aggregate auto streams when a round's updates would exceed this
FOLDED = "folded"  # Update.codec key of an update a transport already folded chunk by chunk


def can_stream(aggregator: Any, pipeline: Any, asynchronous: Any = None) -> str | None:
    """None when this strategy and pipeline can fold updates as they arrive, else why not."""
    from pollen.strategy.base import WeightedMean

    if asynchronous is not None:
        return "an asynchronous strategy weights each update by its staleness in its own buffer"
    if type(aggregator) is not WeightedMean:
        return f"aggregator {getattr(aggregator, 'name', aggregator)!r} needs every update at once"
    combining = [s.name for s in pipeline.steps if type(s).combine is not _base_combine()]
    if combining:
        return f"{combining[0]!r} combines the round's updates itself (its own streaming sum)"
    return None


def _base_combine() -> Any:
    from pollen.transforms.base import UpdateStep

    return UpdateStep.combine


def streaming_wanted(mode: str, state: Mapping[str, np.ndarray], why_not: str | None, parties: int = 1) -> bool:
    """Whether a round of ``parties`` updates folds them in arrival order (``StreamingMean``,
    ``--stream-aggregate``): ``auto`` does when holding them all would take more than ``AUTO_BYTES``
    (below it, ``auto`` folds them in party order: ``OrderedFold``).

    Raises:
        ConfigError: ``on`` with a strategy or pipeline that cannot stream.
    """
    if mode == "off":
        return False
    if mode == "on":
        if why_not is not None:
            raise ConfigError(f"--stream-aggregate on cannot work here: {why_not}; use --stream-aggregate auto or off")
        return True
    return why_not is None and big_round(state_nbytes(state), parties)


def big_round(model_bytes: int, parties: int) -> bool:
    """Whether ``parties`` updates of ``model_bytes`` each are more than ``--stream-aggregate auto``
    holds at once (``AUTO_BYTES``)."""
    return model_bytes * parties > AUTO_BYTES


class OrderedFold:
    """The aggregator's running sum (``begin``/``add``/``finish``), fed in party order as replies
    arrive: the result is ``aggregator.aggregate`` of the round's good updates in that order, bit for
    bit, without holding every update until the last reply.

    Args:
        aggregator: a linear aggregator with ``begin``, ``add`` and ``finish`` (``WeightedMean``).
        order: the round's party ids in the order the in-memory path sums them.
    """

    in_place = False  # the server optimizer steps as usual (``step`` below is for StreamingMean)

    def __init__(self, aggregator: Any, order: Sequence[str]) -> None:
        self.aggregator = aggregator
        self.order = list(order)
        self.acc = aggregator.begin()
        self.like: dict[str, np.ndarray] | None = None  # the first folded delta's dtypes (``finish``)
        self.count = 0
        self.raw_bytes = 0
        self.spoiled: str | None = None  # never: nothing is folded in part
        self._next = 0
        self._held: dict[str, Update | None] = {}  # arrived before their turn (None: no update)

    def add(self, update: Update, who: str = "") -> Update:
        """Take ``who``'s checked update; returns it without its delta (what the round loop keeps)."""
        self.raw_bytes += state_nbytes(update.delta)
        self._held[who] = update
        self._drain()
        return update.with_(delta={})

    def skip(self, who: str) -> None:
        """``who`` replied without an update it can count (failed, refused): the fold moves past it."""
        self._held[who] = None
        self._drain()

    def _drain(self, everything: bool = False) -> None:
        """Fold the held updates whose turn has come (``everything``: all, past parties that never replied)."""
        while self._next < len(self.order):
            who = self.order[self._next]
            if who not in self._held and not everything:
                return
            update = self._held.pop(who, None)
            self._next += 1
            if update is not None:
                if self.like is None:
                    self.like = {k: np.empty(0, v.dtype) for k, v in update.delta.items()}
                fold = getattr(self.aggregator, "fold", None)  # in place where the aggregator offers it
                self.acc = fold(self.acc, update) if fold is not None else self.aggregator.add(self.acc, update)
                self.count += 1

    @property
    def waiting(self) -> int:
        """Updates held until the replies before them in party order are in."""
        return sum(u is not None for u in self._held.values())

    def close(self) -> None:
        """Nothing to close: updates are folded whole, by the round loop's own thread."""

    def finish(self) -> ModelState:
        """The aggregate of every update taken (those still waiting for a late party's turn too).

        Raises:
            StrategyError: nothing was taken.
        """
        self._drain(everything=True)
        return self.aggregator.finish(self.acc, self.like)


class StreamingMean:
    """``Σ wᵢ Δᵢ / Σ wᵢ`` folded one update (or one piece of an update) at a time.

    Args:
        like: the global model: names, shapes and dtypes of the deltas (float tensors sum in their
            own dtype, integer buffers in float64 and are rounded back, as ``WeightedMean`` does).
        weighted: weight by examples (FedAvg) or uniformly (SCAFFOLD).
    """

    def __init__(self, like: Mapping[str, np.ndarray], weighted: bool = True) -> None:
        self.like = {k: (v.shape, v.dtype) for k, v in like.items()}
        self.weighted = weighted
        self.sum: dict[str, np.ndarray] = {}
        self.weight = 0.0
        self.count = 0
        self.raw_bytes = 0
        self.lock = threading.Lock()  # a transport may fold several uploads at once
        self.spoiled: str | None = None  # why part of an update is in the sum without the rest
        self.closed = False
        self._open: set[str] = set()  # uploads folded in part, not yet committed

    def spoil(self, reason: str) -> None:
        """Record that a stream broke after part of it was folded: the round cannot be aggregated."""
        self.spoiled = self.spoiled or reason

    def weight_of(self, num_examples: int) -> float:
        """The weight an update with ``num_examples`` gets."""
        return float(num_examples) if self.weighted else 1.0

    def _acc(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        acc = self.sum.get(name)
        if acc is None:
            want = self.like.get(name, (shape, dtype))[1]
            acc = np.zeros(shape, dtype=want if np.issubdtype(want, np.floating) else np.float64)
            self.sum[name] = acc
        return acc

    in_place = True  # ``step`` writes the new model into the mean's buffers

    def add(self, update: Update, who: str = "") -> Update:
        """Fold a whole update; returns it without its delta (what the round loop keeps)."""
        w = self.weight_of(update.num_examples)
        for name, v in update.delta.items():  # every shape checked before anything is folded
            shape = self.sum[name].shape if name in self.sum else self.like.get(name, (v.shape,))[0]
            if tuple(shape) != v.shape:
                raise StrategyError(f"tensor {name!r}: update of shape {v.shape}, the model has {tuple(shape)}")
        for name, v in update.delta.items():
            acc = self._acc(name, v.shape, v.dtype)
            acc += v * w if is_float(v) and v.dtype == acc.dtype else v.astype(acc.dtype) * w
        self.commit(w, state_nbytes(update.delta))
        return update.with_(delta={})

    def skip(self, who: str) -> None:
        """A reply without an update: nothing to fold (arrival order waits for no one)."""

    def add_piece(self, name: str, start: int, values: np.ndarray, weight: float, shape: tuple[int, ...],
                  who: str = "") -> None:
        """Fold ``values`` into the flat elements ``[start, start + len)`` of tensor ``name``
        (an update arriving chunk by chunk, from ``who``); ``commit`` once the whole update is in.

        Raises:
            StrategyError: the round no longer takes updates (its deadline passed).
        """
        with self.lock:
            if self.closed:
                raise StrategyError("the round's running sum is closed (its deadline passed)")
            self._open.add(who)
            acc = self._acc(name, shape, values.dtype).reshape(-1)
            part = acc[start : start + values.size]
            part += values * weight if values.dtype == part.dtype else values.astype(part.dtype) * weight

    def commit(self, weight: float, nbytes: int, who: str = "") -> None:
        """Count one whole update of ``weight`` (after ``add_piece`` of all its pieces)."""
        with self.lock:
            if self.closed and who:
                raise StrategyError("the round's running sum is closed (its deadline passed)")
            self._open.discard(who)
            self.weight += weight
            self.count += 1
            self.raw_bytes += nbytes

    def close(self) -> None:
        """Take no more pieces; an upload folded in part by then spoils the sum."""
        with self.lock:
            self.closed = True
            if self._open:
                self.spoil(f"the uploads of {sorted(self._open)[:5]} were cut after part of them was folded")

    def finish(self) -> ModelState:
        """The mean, in place of the sums (integer entries rounded back to their dtype).

        Raises:
            StrategyError: nothing was folded.
        """
        self.close()
        if self.count == 0 or self.weight <= 0:
            raise StrategyError("cannot average zero updates")
        out: ModelState = {}
        for name, acc in self.sum.items():
            acc /= self.weight
            target = self.like.get(name, (acc.shape, acc.dtype))[1]
            out[name] = acc if np.issubdtype(target, np.floating) else np.rint(acc).astype(target)
        self.sum = {}
        return out


def step(optimizer: Any, state: ModelState, mean: ModelState, opt_state: Mapping[str, np.ndarray]) -> tuple[ModelState, dict[str, np.ndarray]]:
    """The server step on a streamed mean. The plain step ``x + lr·Δ`` is written into the mean's own
    buffers (the running sum, which nothing else holds), so a big model costs no third copy; other
    optimizers step as usual. A global tensor on disk for the round (``pollen.server.spill``) is
    added from its file chunk by chunk (the same additions, bit for bit)."""
    from pollen.server.spill import SpilledTensor
    from pollen.strategy.base import ServerOptimizer

    if type(optimizer) is not ServerOptimizer:
        return optimizer.step(state, mean, opt_state)
    new = dict(state)
    for k, d in mean.items():
        x = state[k]
        spilled = isinstance(x, SpilledTensor)
        if is_float(x) and d.dtype == x.dtype and d.shape == x.shape and d.flags.writeable and (
                not spilled or d.flags.c_contiguous):
            if optimizer.lr != 1.0:
                d *= optimizer.lr
            if spilled:
                x.add_to(d)
            else:
                d += x
            new[k] = d
        else:
            from pollen.strategy.base import apply_delta

            new[k] = apply_delta(x.load() if spilled else x, d, optimizer.lr)
    return new, dict(opt_state)
