"""The party runtime: a party's data, its state kept between rounds, and the handling of tasks.

The same ``LocalParty`` answers tasks whichever transport carried them (in-process, process pool,
gRPC), so the party side of a round is written once.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from pollen.client.trainer import GradHook, Trainer
from pollen.errors import ConfigError, PollenError
from pollen.transforms.base import Pipeline, StepContext, empty_pipeline
from pollen.types import ModelState, Reply, Task, Update


# Extra task kinds (secure-aggregation stages, …): kind -> handler(party, task) -> Reply.
# Registered by the subsystem that defines the kind; the party runtime stays one class.
TASK_HANDLERS: dict[str, Callable[["LocalParty", Task], Reply]] = {}


class ClientHook:
    """A strategy's party-side part (SCAFFOLD's control variates, …), run around local training.

    A round config names the hooks it needs in ``extra["client_hooks"]``; strategies register
    theirs in ``CLIENT_HOOKS``. Per-party state lives in ``party.state`` under the hook's own key.
    """

    def prepare(self, party: "LocalParty", task: Task, state: ModelState) -> tuple[ModelState, tuple[GradHook, ...]]:
        """Before training: the state to train from (server extras removed) and gradient hooks."""
        return state, ()

    def finish(self, party: "LocalParty", task: Task, update: Update) -> Update:
        """After training: a new update (extra tensors added, party state advanced)."""
        return update


CLIENT_HOOKS: dict[str, ClientHook] = {}
# Keys of ``LocalParty.state`` small enough to go into every simulation checkpoint, because losing
# them on ``--resume`` would be wrong rather than merely slower (privacy accountants: a party's ε
# would restart at zero). Modules add their keys; large state (residuals, control variates) is not
# listed and restarts empty.
DURABLE_STATE_KEYS: set[str] = set()


def client_hooks(names: object) -> list[ClientHook]:
    """The registered hooks ``names`` lists (strategies register theirs when imported).

    Raises:
        ConfigError: a name no strategy registered.
    """
    names = list(names or ())  # type: ignore[call-overload]
    if any(n not in CLIENT_HOOKS for n in names):
        import pollen.strategy  # noqa: F401 - registers the built-in strategies' hooks
    unknown = [n for n in names if n not in CLIENT_HOOKS]
    if unknown:
        raise ConfigError(f"round config asks for client hook(s) {unknown}; registered: {sorted(CLIENT_HOOKS)}")
    return [CLIENT_HOOKS[n] for n in names]


def party_index(party_id: str) -> int:
    """A stable integer for a party id (the number itself for numeric ids)."""
    return int(party_id) if party_id.isdigit() else zlib.crc32(party_id.encode())


def round_seed(seed: int, party_id: str, round: int) -> int:
    """The seed of one party's randomness in one round (shuffling, augmentation, codecs)."""
    return int(np.random.SeedSequence([seed, party_index(party_id), round]).generate_state(1)[0])


class Shard:
    """A party's examples: either its own tensors, or a view (indices) into tensors shared by all
    parties of a simulation, materialised only while the party trains (memory stays bounded by
    the parties training at once, not by the parties that exist)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None) -> None:
        self._x, self._y, self.index = x, y, index

    def __len__(self) -> int:
        return int(self._x.shape[0] if self.index is None else self.index.shape[0])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of this shard."""
        if self.index is None:
            return self._x, self._y
        return self._x[self.index], self._y[self.index]


class LocalParty:
    """One party: its training data, an optional held-out split, and per-party state.

    Args:
        party_id: the party's id.
        train: the party's training examples.
        trainer: the (shared) trainer that runs the model.
        val: the party's held-out split for federated evaluation (None or empty: evaluate on train).
        seed: the run seed; each round's randomness is derived from it.
        pipeline: client-side update steps (clip, noise, compress, mask).
    """

    def __init__(
        self,
        party_id: str,
        train: Shard,
        trainer: Trainer,
        val: Shard | None = None,
        seed: int = 0,
        pipeline: Pipeline | None = None,
    ) -> None:
        self.party_id = party_id
        self.train = train
        self.val = val
        self.trainer = trainer
        self.seed = seed
        self.pipeline = pipeline or empty_pipeline()
        self.state: dict[str, Any] = {}  # kept between rounds (control variates, residuals, …)

    def durable_state(self) -> dict[str, Any]:
        """The entries of ``state`` listed in ``DURABLE_STATE_KEYS`` (JSON-able), for checkpoints."""
        return {k: self.state[k] for k in DURABLE_STATE_KEYS if k in self.state}

    def restore_state(self, saved: Mapping[str, Any]) -> None:
        """Put back what ``durable_state`` returned (on ``--resume``). Not filtered by
        ``DURABLE_STATE_KEYS``: the module that registers a key may not be imported yet."""
        self.state.update(saved)

    @property
    def num_examples(self) -> int:
        """Training examples this party holds."""
        return len(self.train)

    def handle(self, task: Task) -> Reply:
        """Run one task and return the reply; a failure is reported in the reply, not raised."""
        start = time.perf_counter()
        try:
            if task.kind == "fit":
                return Reply(self.party_id, "fit", task.round, update=self.fit(task),
                             seconds=time.perf_counter() - start)
            if task.kind == "evaluate":
                return Reply(self.party_id, "evaluate", task.round, evaluation=self.evaluate(task),
                             seconds=time.perf_counter() - start)
            handler = TASK_HANDLERS.get(task.kind)
            if handler is None:
                raise PollenError(f"unknown task kind {task.kind!r}; known: fit, evaluate, {', '.join(TASK_HANDLERS)}")
            reply = handler(self, task)
            return replace(reply, seconds=time.perf_counter() - start)
        except (PollenError, RuntimeError, ValueError) as exc:
            return Reply(self.party_id, task.kind, task.round, failure=f"{type(exc).__name__}: {exc}",
                         seconds=time.perf_counter() - start)

    def fit(self, task: Task):
        """Train on local data and run the update pipeline."""
        seed = round_seed(self.seed, self.party_id, task.round)
        gen = torch.Generator().manual_seed(seed)
        task = replace(task, state=self.pipeline.decode_model(task.state, task.config))  # downlink codec
        hooks = client_hooks(task.config.extra.get("client_hooks"))  # SCAFFOLD's correction, …
        start_state, grad_hooks = task.state, ()
        for hook in hooks:
            start_state, more = hook.prepare(self, task, start_state)
            grad_hooks += more
        shared = task.config.shared_names
        private = self.state.get("private")
        if shared is not None and private:
            # FedBN / FedPer: this party's own copies of the tensors that are not shared.
            start_state = {**start_state, **private}
        if task.config.extra.get("dp_sgd"):
            from pollen.privacy.dpsgd import dp_fit  # record-level DP (needs the 'dp' extra)

            update = dp_fit(self.trainer, start_state, *self.train.tensors(), task.config, gen, self.state)
        else:
            update = self.trainer.fit(start_state, *self.train.tensors(), task.config, gen, grad_hooks)
        for hook in hooks:
            update = hook.finish(self, task, update)
        if shared is not None:
            keep = set(shared)
            own = self.trainer.model.state_dict()
            self.state["private"] = {k: own[k].detach().numpy().copy() for k in own if k not in keep}
        ctx = StepContext(self.party_id, task.round, np.random.default_rng(seed), self.state, task.state,
                          task.config.extra)
        return self.pipeline.encode(update, ctx)

    def evaluate(self, task: Task):
        """Evaluate the given model on the held-out split (the training data when there is none)."""
        state = task.state
        private = self.state.get("private")
        if task.config.extra.get("personalized") and private:
            state = {**task.state, **private}  # FedPer/FedBN: evaluate the personalised model
        data = self.val if self.val is not None and len(self.val) > 0 else self.train
        return self.trainer.evaluate(state, *data.tensors())
