"""The update pipeline: small steps ``Update -> Update`` applied on the party after training
(clip → local noise → compress → mask/encrypt, in that order), with their inverses on the server.

A step is pure in its inputs: it returns a new ``Update`` and never mutates the one it got.
State a step keeps on a party between rounds (top-k's error-feedback residual, …) lives in
``StepContext.party_state`` under the step's own key; the party runtime keeps that dict.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pollen.errors import ConfigError
from pollen.types import ModelState, Update


@dataclass
class StepContext:
    """What a client-side step may know about where it runs.

    Attributes:
        party_id: the party running the step.
        round: the current round.
        rng: a seeded generator for non-security randomness (stochastic rounding, …).
        party_state: per-party state kept between rounds (the step uses its own key).
        global_state: the global model the party started from (read only).
    """

    party_id: str
    round: int
    rng: np.random.Generator
    party_state: MutableMapping[str, Any] = field(default_factory=dict)
    global_state: Mapping[str, np.ndarray] = field(default_factory=dict)


class UpdateStep:
    """One step of the update pipeline. Subclasses override what they need.

    Attributes:
        name: short identifier, used in error messages and codec metadata.
        stage: one of ``clip``, ``noise``, ``compress``, ``mask`` (the pipeline's fixed order).
        linear: True when the server may sum encoded updates before decoding (masking, HE).
    """

    name = "identity"
    stage = "compress"
    linear = False

    def encode(self, update: Update, ctx: StepContext) -> Update:
        """Client side: transform a party's update before it leaves the party."""
        return update

    def decode(self, update: Update) -> Update:
        """Server side: invert ``encode`` for one party's update (before aggregation)."""
        return update

    def after_aggregate(self, delta: ModelState, round: int, num_updates: int) -> ModelState:
        """Server side: act on the aggregated delta (central DP noise, …)."""
        return delta


STAGE_ORDER = ("clip", "noise", "compress", "mask")


@dataclass(frozen=True)
class Pipeline:
    """An ordered list of update steps.

    Raises:
        ConfigError: steps out of the fixed order clip → noise → compress → mask.
    """

    steps: tuple[UpdateStep, ...] = ()

    def __post_init__(self) -> None:
        ranks = [STAGE_ORDER.index(s.stage) for s in self.steps]
        if ranks != sorted(ranks):
            order = " → ".join(f"{s.name}({s.stage})" for s in self.steps)
            raise ConfigError(f"update steps must run in the order {' → '.join(STAGE_ORDER)}; got {order}")

    def encode(self, update: Update, ctx: StepContext) -> Update:
        """Apply every step's client side, in order."""
        for step in self.steps:
            update = step.encode(update, ctx)
        return update

    def decode(self, update: Update) -> Update:
        """Apply every step's server-side inverse, in reverse order."""
        for step in reversed(self.steps):
            update = step.decode(update)
        return update

    def after_aggregate(self, delta: ModelState, round: int, num_updates: int) -> ModelState:
        """Apply every step's post-aggregation action."""
        for step in self.steps:
            delta = step.after_aggregate(delta, round, num_updates)
        return delta

    @property
    def names(self) -> list[str]:
        """Step names in order."""
        return [s.name for s in self.steps]


def check_compatible(pipeline: Pipeline, aggregator_name: str, aggregator_linear: bool) -> None:
    """Refuse pipelines the aggregator cannot work with, before the run starts.

    A masked or encrypted update can only be summed: an aggregator that needs each party's update
    (median, Krum, …) cannot run on it.
    """
    masked = [s.name for s in pipeline.steps if s.stage == "mask"]
    if masked and not aggregator_linear:
        raise ConfigError(
            f"aggregator {aggregator_name!r} needs each party's update in the clear, but {masked[0]!r} "
            "hides individual updates and reveals only their sum; use a mean-based strategy "
            "(fedavg, fedavgm, fedadam, …) with it"
        )


def empty_pipeline() -> Pipeline:
    """A pipeline that passes updates through unchanged."""
    return Pipeline(())


def pipeline_of(steps: Sequence[UpdateStep]) -> Pipeline:
    """Build a pipeline from steps."""
    return Pipeline(tuple(steps))
