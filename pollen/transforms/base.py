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
from pollen.types import ModelState, RoundConfig, Update


@dataclass
class StepContext:
    """What a client-side step may know about where it runs.

    Attributes:
        party_id: the party running the step.
        round: the current round.
        rng: a seeded generator for non-security randomness (stochastic rounding, …).
        party_state: per-party state kept between rounds (the step uses its own key).
        global_state: the global model the party started from (read only).
        extra: the round config's ``extra`` (what server-side ``configure`` put there: the current
            adaptive clip norm, …).
    """

    party_id: str
    round: int
    rng: np.random.Generator
    party_state: MutableMapping[str, Any] = field(default_factory=dict)
    global_state: Mapping[str, np.ndarray] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


class UpdateStep:
    """One step of the update pipeline. Subclasses override what they need.

    Attributes:
        name: short identifier, used in error messages and codec metadata.
        stage: one of ``clip``, ``noise``, ``observe``, ``compress``, ``mask`` (the pipeline's fixed order).
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

    def decode_against(self, update: Update, reference: Mapping[str, np.ndarray] | None) -> Update:
        """Server side: ``decode`` for steps that need the global model the party started from
        (client-side pruning rebuilds pruned weights from it). The default ignores it."""
        return self.decode(update)

    def encode_model(self, state: ModelState, config: RoundConfig) -> ModelState:
        """Server side: the global model as sent to parties (downlink compression)."""
        return state

    def decode_model(self, state: ModelState, config: RoundConfig) -> ModelState:
        """Party side: invert ``encode_model`` before training."""
        return state

    def after_aggregate(self, delta: ModelState, round: int, num_updates: int) -> ModelState:
        """Server side: act on the aggregated delta (central DP noise, …)."""
        return delta

    def configure(self, config: RoundConfig) -> RoundConfig:
        """Server side, before a round's tasks are sent: add what parties' ``encode`` needs to
        ``config.extra`` (parties read it as ``StepContext.extra``). Returns a new config."""
        return config

    def report(self, round: int) -> dict[str, float]:
        """Server side, after ``after_aggregate``: numbers for the round's history line (ε, …)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Server-side state that must survive a coordinator restart (an accountant's history, an
        adaptive clip norm), JSON-able; saved in every checkpoint. Default: none."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of ``state_dict`` (on ``--resume``)."""

    def combine(self, updates: list[Update], parties: Sequence[str], round: int, transport: Any) -> list[Update]:
        """Server side, after ``decode`` and before the aggregator: turn the round's updates into
        what the aggregator receives. Linear steps that hide single updates (HE, secure sums)
        return one update carrying the recovered sum; they may talk to ``parties`` (same order as
        ``updates``) through ``transport``. The default passes the updates through."""
        return updates


STAGE_ORDER = ("clip", "noise", "observe", "compress", "mask")  # observe: the audit's seat (pollen/privacy/canaries.py)


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

    def decode(self, update: Update, reference: Mapping[str, np.ndarray] | None = None) -> Update:
        """Apply every step's server-side inverse, in reverse order (``reference``: the global
        model the update is relative to, for steps that need it)."""
        for step in reversed(self.steps):
            update = step.decode_against(update, reference)
        return update

    def encode_model(self, state: ModelState, config: RoundConfig) -> ModelState:
        """The global model as sent to parties: every step's ``encode_model``, in order."""
        for step in self.steps:
            state = step.encode_model(state, config)
        return state

    def decode_model(self, state: ModelState, config: RoundConfig) -> ModelState:
        """Party side: every step's ``decode_model``, in reverse order."""
        for step in reversed(self.steps):
            state = step.decode_model(state, config)
        return state

    def after_aggregate(self, delta: ModelState, round: int, num_updates: int) -> ModelState:
        """Apply every step's post-aggregation action."""
        for step in self.steps:
            delta = step.after_aggregate(delta, round, num_updates)
        return delta

    def configure(self, config: RoundConfig) -> RoundConfig:
        """Apply every step's ``configure``, in order."""
        for step in self.steps:
            config = step.configure(config)
        return config

    def report(self, round: int) -> dict[str, float]:
        """Every step's ``report`` merged (later steps win on equal keys)."""
        out: dict[str, float] = {}
        for step in self.steps:
            out.update(step.report(round))
        return out

    def combine(self, updates: list[Update], parties: Sequence[str], round: int, transport: Any) -> list[Update]:
        """Apply every step's server-side ``combine``, last stage first (as ``decode``)."""
        for step in reversed(self.steps):
            updates = step.combine(updates, parties, round, transport)
        return updates

    def state_dict(self) -> dict[str, Any]:
        """Every step's server-side state, keyed ``<position>:<name>`` (steps without state left out)."""
        return {f"{i}:{s.name}": st for i, s in enumerate(self.steps) if (st := s.state_dict())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of ``state_dict``.

        Raises:
            ConfigError: the saved state belongs to steps this pipeline does not have (the run was
                resumed with different privacy or compression settings).
        """
        keys = {f"{i}:{s.name}": s for i, s in enumerate(self.steps)}
        unknown = sorted(set(state) - set(keys))
        if unknown:
            raise ConfigError(f"the checkpoint holds state of update steps {unknown} that this run does not have; "
                              "resume with the settings the run was started with")
        for key, st in state.items():
            keys[key].load_state_dict(st)

    @property
    def names(self) -> list[str]:
        """Step names in order."""
        return [s.name for s in self.steps]


def check_pipeline(pipeline: Pipeline, aggregator: Any = None) -> None:
    """The one compatibility check of an update pipeline (and the aggregator it feeds), run by the
    composition root before a run starts.

    - Masking (secure aggregation) and encryption (HE) reveal only the *sum* of the parties' encoded
      updates. A codec whose decoding is per party (top-k's own indices, per-party scales of int8 /
      QSGD / TernGrad, fp16 bit patterns, pruning masks) cannot be decoded from that sum; the only
      quantisation that composes with masking is the masking step's own fixed-point encoding into
      its field.
    - An aggregator that needs each party's update (median, Krum, …) cannot run on masked updates.
    - Error feedback adds what earlier rounds dropped to this round's message, so with DP clipping
      a party's message is no longer bounded by the clip norm that the noise is calibrated to.

    Args:
        pipeline: the steps, in order.
        aggregator: the strategy's aggregator (``name``, ``linear``), or None to check the steps alone.

    Raises:
        ConfigError: the first combination that cannot work, with the reason and the fix.
    """
    masked = [s.name for s in pipeline.steps if s.stage == "mask"]
    codecs = [s.name for s in pipeline.steps if s.stage == "compress" and not s.linear]
    if masked and codecs:
        raise ConfigError(
            f"--codec/--prune {codecs[0]!r} cannot be used with {masked[0]!r}: the server only sees the sum of "
            "the parties' masked or encrypted updates, and this codec's encoding (its own indices or scales per "
            "party) cannot be decoded from a sum. Masking already quantises each update into its finite field, "
            "the only quantisation that composes with it; use --codec none (--downlink and --autocast are fine)"
        )
    if masked and aggregator is not None and not aggregator.linear:
        raise ConfigError(
            f"aggregator {aggregator.name!r} needs each party's update in the clear, but {masked[0]!r} "
            "hides individual updates and reveals only their sum; use a mean-based strategy "
            "(fedavg, fedavgm, fedadam, …) with it"
        )
    clipped = [s.name for s in pipeline.steps if s.stage == "clip"]
    feedback = [s.name for s in pipeline.steps if getattr(s, "error_feedback", False)]
    if clipped and feedback:
        raise ConfigError(
            f"--error-feedback with {feedback[0]!r} cannot be combined with DP clipping ({clipped[0]!r}): the "
            "residual adds what earlier rounds dropped to this round's message, so it is no longer bounded by the "
            "clip norm the DP noise is calibrated to; turn error feedback off (--no-error-feedback)"
        )


def empty_pipeline() -> Pipeline:
    """A pipeline that passes updates through unchanged."""
    return Pipeline(())


def pipeline_of(steps: Sequence[UpdateStep]) -> Pipeline:
    """Build a pipeline from steps."""
    return Pipeline(tuple(steps))
