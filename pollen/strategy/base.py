"""A strategy is a composition: who trains (sampler), what they are told (client config),
how their updates combine (aggregator), how the combination moves the global model (server
optimizer), and which tensors are shared (name filter). Named strategies (``fedavg.py``, …) are
functions that compose these parts; none subclasses another.

All parts are pure: they return new values and never mutate their inputs. Randomness is passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from pollen.errors import StrategyError
from pollen.strategy.schedule import LrSchedule, epochs_for
from pollen.types import ModelState, RoundConfig, Update, is_float

if TYPE_CHECKING:  # pragma: no cover
    from pollen.strategy.fedbuff import AsyncSpec


# ---------------------------------------------------------------- sampler
@dataclass(frozen=True)
class Sampler:
    """Pick the parties of a round: a fixed count, or a fraction of those available.

    Round ``r`` trains ``np.random.default_rng([seed, r]).choice(n, k, replace=False)`` over the
    available parties in id order (the BENCHMARKS.md recipe).

    With ``balanced``, rounds instead walk through a stream of random permutations of the parties
    (``default_rng([seed, epoch, 1])``), k at a time: every party trains once before any trains
    twice, so over R rounds each takes part ⌊Rk/n⌋ or ⌈Rk/n⌉ times (W1: 30 rounds of 10 of 100
    parties, 3 times each, where random sampling gives some party 8). Record-level DP-SGD, whose
    accountant takes no credit for the sampling of parties, pays for the most-sampled party; DP-FTRL
    needs each party at most once per epoch. Party-level DP-FedAvg, whose accountant relies on
    random sampling, keeps ``balanced`` off.

    Attributes:
        fraction: fraction of available parties per round (used when ``count`` is None).
        count: parties per round (overrides ``fraction``).
        min_parties: fewest parties a round may sample.
        seed: the run seed.
        balanced: every party once per epoch of n/k rounds, in a random order.
    """

    fraction: float = 1.0
    count: int | None = None
    min_parties: int = 1
    seed: int = 0
    balanced: bool = False

    def sample_size(self, available: int) -> int:
        """How many of ``available`` parties a round trains."""
        k = self.count if self.count is not None else int(round(self.fraction * available))
        return max(min(k, available), min(self.min_parties, available))

    def select(self, round: int, available: Sequence[str]) -> list[str]:
        """The parties that train in ``round`` (a subset of ``available``)."""
        ordered = sorted(available, key=_id_key)
        k = self.sample_size(len(ordered))
        if k == len(ordered):  # everyone: the same set in id order (a permutation would only reorder it)
            return ordered
        if self.balanced:
            return self._balanced(round, ordered, k)
        rng = np.random.default_rng([self.seed, round])
        return [ordered[i] for i in rng.choice(len(ordered), k, replace=False)]

    def _balanced(self, round: int, ordered: Sequence[str], k: int) -> list[str]:
        """Positions (round − 1)·k … round·k − 1 of the stream of per-epoch permutations; a party
        met twice where the slice spans two epochs is skipped for the next one in the stream."""
        n = len(ordered)
        chosen: list[str] = []
        pos = (round - 1) * k
        while len(chosen) < k:
            epoch, at = divmod(pos, n)
            perm = np.random.default_rng([self.seed, epoch, 1]).permutation(n)
            for i in perm[at:]:
                if ordered[i] not in chosen:
                    chosen.append(ordered[i])
                if len(chosen) == k:
                    break
            pos = (epoch + 1) * n
        return chosen


def _id_key(party_id: str) -> tuple[int, int | str]:
    return (0, int(party_id)) if party_id.isdigit() else (1, party_id)


# ---------------------------------------------------------------- client config
ConfigFn = Callable[[int, RoundConfig], RoundConfig]


@dataclass(frozen=True)
class ClientConfig:
    """What parties are told each round: the base config, a learning-rate schedule, local epochs
    by round, and an optional user hook ``fn(round, config) -> config`` applied last.

    Attributes:
        base: the round config before schedules.
        lr_decay: multiply the local lr by this every round (used when ``lr_schedule`` is None).
        extra: settings merged into ``RoundConfig.extra`` (strategy-specific).
        hook: a user function applied last (no subclassing needed).
        lr_schedule: step / exp / cosine schedule of the local lr (overrides ``lr_decay``).
        epochs_by_round: ``((from_round, epochs), …)``: local epochs change at those rounds.
    """

    base: RoundConfig = field(default_factory=RoundConfig)
    lr_decay: float = 1.0
    extra: Mapping[str, Any] = field(default_factory=dict)
    hook: ConfigFn | None = None
    lr_schedule: LrSchedule | None = None
    epochs_by_round: tuple[tuple[int, int], ...] = ()

    def configure(self, round: int, shared_names: tuple[str, ...] | None) -> RoundConfig:
        """The config for ``round``."""
        if self.lr_schedule is not None:
            lr = self.lr_schedule.lr(self.base.lr, round)
        else:
            lr = self.base.lr * self.lr_decay ** (round - 1)
        cfg = self.base.with_(
            round=round,
            lr=lr,
            epochs=epochs_for(self.epochs_by_round, round, self.base.epochs),
            shared_names=shared_names,
            extra={**self.base.extra, **self.extra},
        )
        return self.hook(round, cfg) if self.hook is not None else cfg


# ---------------------------------------------------------------- aggregators
class Aggregator:
    """Combines the (decoded) updates of one round into one delta.

    Attributes:
        name: identifier used in messages.
        linear: True when the result depends only on the (weighted) sum of updates, so it works
            over securely summed or encrypted updates.
    """

    name = "aggregator"
    linear = False

    def aggregate(self, updates: Sequence[Update]) -> ModelState:  # pragma: no cover - interface
        raise NotImplementedError


class WeightedMean(Aggregator):
    """Σ nᵢ Δᵢ / Σ nᵢ (FedAvg's weighting by examples), as a running sum (FedJAX style): the
    coordinator may ``add`` each update as it arrives instead of holding all of them.

    Integer buffers (BatchNorm's ``num_batches_tracked``) are averaged and rounded.
    """

    name = "mean"
    linear = True

    def __init__(self, weighted: bool = True) -> None:
        self.weighted = weighted

    def begin(self) -> dict[str, Any]:
        """An empty running sum."""
        return {"sum": None, "weight": 0.0}

    def add(self, acc: dict[str, Any], update: Update) -> dict[str, Any]:
        """Fold one update into the running sum (returns a new accumulator)."""
        w = float(update.num_examples) if self.weighted else 1.0
        if acc["sum"] is None:
            total = {k: v.astype(np.float64 if not is_float(v) else v.dtype) * w for k, v in update.delta.items()}
        else:
            total = dict(acc["sum"])
            for k, v in update.delta.items():
                total[k] = total[k] + v * w
        return {"sum": total, "weight": acc["weight"] + w}

    def fold(self, acc: dict[str, Any], update: Update) -> dict[str, Any]:
        """``add`` in place, for a caller that owns ``acc``: the same float operations in the same
        order (the same sums, bit for bit) without two new arrays per tensor and update."""
        if acc["sum"] is None:
            return self.add(acc, update)
        w = float(update.num_examples) if self.weighted else 1.0
        total, scratch = acc["sum"], acc.setdefault("scratch", {})
        for k, v in update.delta.items():
            t = total[k]
            product = v.dtype if is_float(v) else np.dtype(np.float64)  # the dtype of ``v * w`` (w a Python float)
            if not isinstance(t, np.ndarray) or t.shape != v.shape or np.result_type(t.dtype, product) != t.dtype:
                total[k] = t + v * w
                continue
            buf = scratch.get(k)
            if buf is None or buf.dtype != product or buf.shape != v.shape:
                buf = scratch[k] = np.empty(v.shape, product)
            np.multiply(v, w, out=buf)
            t += buf
        acc["weight"] += w
        return acc

    def finish(self, acc: dict[str, Any], like: Mapping[str, np.ndarray] | None = None) -> ModelState:
        """The mean; integer entries rounded back to the dtype in ``like`` (or int64)."""
        if acc["sum"] is None or acc["weight"] <= 0:
            raise StrategyError("cannot average zero updates")
        out: ModelState = {}
        for k, v in acc["sum"].items():
            mean = v / acc["weight"]
            target = like[k].dtype if like is not None and k in like else mean.dtype
            out[k] = np.rint(mean).astype(target) if not np.issubdtype(target, np.floating) else mean.astype(target)
        return out

    def aggregate(self, updates: Sequence[Update]) -> ModelState:
        acc = self.begin()
        for u in updates:
            acc = self.add(acc, u)
        return self.finish(acc, updates[0].delta if updates else None)


# ---------------------------------------------------------------- server optimizers
class ServerOptimizer:
    """Moves the global model by the aggregated delta: ``step(global, delta, state)``.

    ``state`` is a dict of numpy arrays (momentum buffers, …) so that it checkpoints with
    safetensors. The plain one is ``x ← x + lr · Δ`` (FedAvg when lr = 1).
    """

    name = "sgd"

    def __init__(self, lr: float | None = 1.0) -> None:
        self.lr = 1.0 if lr is None else lr  # None: the plain step (a config's "strategy default")

    def init(self, global_state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The optimizer's initial state."""
        return {}

    def broadcast(self, global_state: ModelState, state: Mapping[str, np.ndarray]) -> ModelState:
        """What parties receive with a fit task: the global model, plus whatever server state
        the strategy shares (SCAFFOLD's control variate). Default: the global model itself."""
        return global_state

    def step(
        self, global_state: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray]
    ) -> tuple[ModelState, dict[str, np.ndarray]]:
        """Return the new global model and the new optimizer state."""
        new = dict(global_state)
        for k, d in delta.items():
            new[k] = apply_delta(global_state[k], d, self.lr)
        return new, dict(state)


class PerTensorServerOptimizer(ServerOptimizer):
    """A server optimizer that keeps buffers per tensor (FedAvgM's momentum, FedOpt's moments).

    Running statistics take the averaged delta as is; every trained tensor ``x`` moves by
    ``x ← x + lr · s`` where ``s, buffers = update(name, Δ, state)``. Buffers are stored in the
    tensor's dtype.
    """

    def update(self, name: str, d: np.ndarray, state: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The step direction for tensor ``name`` and its new buffers."""
        raise NotImplementedError

    def step(
        self, global_state: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray]
    ) -> tuple[ModelState, dict[str, np.ndarray]]:
        new, out = dict(global_state), dict(state)
        for k, d in delta.items():
            x = global_state[k]
            if is_statistic(k, x):
                new[k] = apply_delta(x, d, 1.0)
                continue
            s, buffers = self.update(k, d, state)
            out.update({b: v.astype(x.dtype, copy=False) for b, v in buffers.items()})
            new[k] = (x + self.lr * s).astype(x.dtype, copy=False)
        return new, out


def is_statistic(name: str, array: np.ndarray) -> bool:
    """True for tensors that are running statistics, not trained weights (integer counters and
    BatchNorm's ``running_mean`` / ``running_var``): server optimizers apply their averaged delta
    as is instead of treating it as a pseudo-gradient."""
    return not is_float(array) or name.endswith(("running_mean", "running_var", "num_batches_tracked"))


def apply_delta(x: np.ndarray, d: np.ndarray, lr: float) -> np.ndarray:
    """``x + lr · d`` in x's dtype (integer buffers take the rounded step)."""
    if is_float(x):
        return (x + lr * d).astype(x.dtype, copy=False)
    return (x + np.rint(lr * d)).astype(x.dtype)


# ---------------------------------------------------------------- shared-name filter
@dataclass(frozen=True)
class NameFilter:
    """Which tensors parties share. ``keep_local`` lists substrings: a tensor whose name contains
    one of them stays on the party (FedBN: BatchNorm; FedPer: the head)."""

    keep_local: tuple[str, ...] = ()

    def shared(self, names: Sequence[str]) -> tuple[str, ...] | None:
        """Names to share, or None for all."""
        if not self.keep_local:
            return None
        out = tuple(n for n in names if not any(s in n for s in self.keep_local))
        if not out:
            raise StrategyError(f"every tensor matches {self.keep_local}: nothing would be shared")
        return out


# ---------------------------------------------------------------- the composition
@dataclass(frozen=True)
class Strategy:
    """A named composition of the parts above."""

    name: str
    sampler: Sampler
    client: ClientConfig
    aggregator: Aggregator
    server_optimizer: ServerOptimizer
    share: NameFilter = field(default_factory=NameFilter)
    asynchronous: "AsyncSpec | None" = None  # FedBuff / FedAsync: buffered, staleness-weighted
    frozen: frozenset[str] = frozenset()  # tensors no party trains (a frozen pre-trained base): never sent
    frozen_digest: str | None = None  # their values' digest, which every party checks against its own

    def with_frozen(self, names: Sequence[str], digest: str | None) -> "Strategy":
        """This strategy with the model's frozen tensors (``requires_grad=False``) left out of every
        message both ways: each party builds them itself with ``model()`` and checks ``digest``."""
        return replace(self, frozen=frozenset(names), frozen_digest=digest if names else None)

    def configure(self, round: int, names: Sequence[str]) -> RoundConfig:
        """The round config every sampled party receives."""
        if not self.frozen:
            return self.client.configure(round, self.share.shared(names))
        trainable = [n for n in names if n not in self.frozen]
        cfg = self.client.configure(round, self.share.shared(trainable))
        shared = cfg.shared_names if cfg.shared_names is not None else tuple(trainable)
        return cfg.with_(shared_names=shared, extra={**cfg.extra, "frozen_digest": self.frozen_digest})

    def payload(self, state: Mapping[str, np.ndarray]) -> ModelState:
        """What a task carries of ``state``: all of it but the frozen tensors."""
        return dict(state) if not self.frozen else {k: v for k, v in state.items() if k not in self.frozen}
