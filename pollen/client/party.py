"""The party runtime: a party's data, its state kept between rounds, and the handling of tasks.

The same ``LocalParty`` answers tasks whichever transport carried them (in-process, process pool,
gRPC), so the party side of a round is written once.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from pollen.client.data import PartyData, Shard
from pollen.client.trainer import GradHook, Trainer
from pollen.errors import ConfigError, PollenError
from pollen.transforms.base import Pipeline, StepContext, empty_pipeline
from pollen.types import EvalResult, ModelState, Reply, Task, Update


Handler = Callable[["LocalParty", Task], Reply]


class ClientHook:
    """A strategy's party-side part (SCAFFOLD's control variates, …), run around local training.

    A round config names the hooks it needs in ``extra["client_hooks"]``; the composition root
    (``pollen.compose``) gives each party the table of known hooks. Per-party state lives in
    ``party.state`` under the hook's own key.
    """

    def prepare(self, party: "LocalParty", task: Task, state: ModelState) -> tuple[ModelState, tuple[GradHook, ...]]:
        """Before training: the state to train from (server extras removed) and gradient hooks."""
        return state, ()

    def finish(self, party: "LocalParty", task: Task, update: Update) -> Update:
        """After training: a new update (extra tensors added, party state advanced)."""
        return update


@dataclass(frozen=True)
class PartyTables:
    """What a party runtime dispatches on, built explicitly by the composition root (no registries
    filled at import time, so nothing depends on which module happened to be imported first).

    Attributes:
        task_handlers: extra task kinds (secure-aggregation stages, HE decryption) → handler.
        client_hooks: hook name (as round configs list them) → the strategy's party side.
        durable_keys: keys of ``LocalParty.state`` whose loss on ``--resume`` would be wrong rather
            than merely slower (privacy accountants). Simulated parties keep all their state in a
            ``PartyStateStore`` on disk; these keys are what a caller without one should keep.
        volatile_keys: keys of ``LocalParty.state`` that must never be written to disk (a round's
            secure-aggregation secrets, an HE secret key): the party-state store keeps them in
            memory only.
    """

    task_handlers: Mapping[str, Handler] = field(default_factory=dict)
    client_hooks: Mapping[str, ClientHook] = field(default_factory=dict)
    durable_keys: frozenset[str] = frozenset()
    volatile_keys: frozenset[str] = frozenset()

    def hooks(self, names: object) -> list[ClientHook]:
        """The hooks ``names`` lists.

        Raises:
            ConfigError: a name this table does not know.
        """
        names = list(names or ())  # type: ignore[call-overload]
        unknown = [n for n in names if n not in self.client_hooks]
        if unknown:
            raise ConfigError(f"round config asks for client hook(s) {unknown}; known: {sorted(self.client_hooks)}")
        return [self.client_hooks[n] for n in names]


def party_index(party_id: str) -> int:
    """A stable integer for a party id (the number itself for numeric ids)."""
    return int(party_id) if party_id.isdigit() else zlib.crc32(party_id.encode())


def round_seed(seed: int, party_id: str, round: int) -> int:
    """The seed of one party's randomness in one round (shuffling, augmentation, codecs)."""
    return int(np.random.SeedSequence([seed, party_index(party_id), round]).generate_state(1)[0])


class LocalParty:
    """One party: its data, its state kept between rounds, and the handling of tasks.

    Args:
        party_id: the party's id.
        data: its ``PartyData`` (training + held-out), one split in any form ``load_data`` may return,
            or a function that loads it on first use.
        trainer: the (shared) trainer that runs the model.
        seed: the run seed; each round's randomness is derived from it.
        pipeline: client-side update steps (clip, noise, compress, mask).
        tables: task handlers, client hooks and durable state keys (``pollen.compose`` builds them).
        context: the party's app ``Context`` (given to the app's own train/evaluate).
        strict: let an error in the app's own code (``AppError``) propagate instead of becoming a
            failure reply (inline simulation: a bug in the user's code stops the run with its message).
    """

    def __init__(
        self,
        party_id: str,
        data: PartyData | Callable[[], PartyData],
        trainer: Trainer,
        seed: int = 0,
        pipeline: Pipeline | None = None,
        tables: PartyTables | None = None,
        context: Any = None,
        strict: bool = False,
    ) -> None:
        self.party_id = party_id
        if not isinstance(data, PartyData) and not callable(data):
            from pollen.client.data import party_data

            data = party_data(data)[0]  # a Shard, (x, y) tensors, a Dataset, …
        self._data = data if isinstance(data, PartyData) else None
        self._load = None if isinstance(data, PartyData) else data
        self.trainer = trainer
        self.seed = seed
        self.pipeline = pipeline or empty_pipeline()
        self.tables = tables or PartyTables()
        self.context = context
        self.strict = strict
        self.state: dict[str, Any] = {}  # kept between rounds (control variates, residuals, …)

    @property
    def data(self) -> PartyData:
        """This party's data (loaded on first use)."""
        if self._data is None:
            assert self._load is not None
            self._data = self._load()
        return self._data

    @property
    def train(self) -> Shard:
        """The training data (a ``Shard`` for in-memory tensors)."""
        return self.data.train  # type: ignore[return-value]

    @property
    def val(self):
        """The held-out data, or None."""
        return self.data.val

    def durable_state(self) -> dict[str, Any]:
        """The entries of ``state`` listed in the durable keys (JSON-able), for checkpoints."""
        return {k: self.state[k] for k in self.tables.durable_keys if k in self.state}

    def restore_state(self, saved: Mapping[str, Any]) -> None:
        """Put back what ``durable_state`` returned (on ``--resume``)."""
        self.state.update(saved)

    @property
    def num_examples(self) -> int:
        """Training examples this party holds."""
        return len(self.data.train)

    def handle(self, task: Task) -> Reply:
        """Run one task and return the reply; a failure is reported in the reply, not raised (an error
        in the app's own code included: a party's failure costs it the round, nothing more)."""
        start = time.perf_counter()
        try:
            if task.kind == "fit":
                return Reply(self.party_id, "fit", task.round, update=self.fit(task),
                             seconds=time.perf_counter() - start)
            if task.kind == "evaluate":
                return Reply(self.party_id, "evaluate", task.round, evaluation=self.evaluate(task),
                             seconds=time.perf_counter() - start)
            handler = self.tables.task_handlers.get(task.kind)
            if handler is None:
                known = ", ".join(["fit", "evaluate", *self.tables.task_handlers])
                raise PollenError(f"unknown task kind {task.kind!r}; known: {known}")
            reply = handler(self, task)
            return replace(reply, seconds=time.perf_counter() - start)
        except (PollenError, RuntimeError, ValueError, TypeError, KeyError, IndexError, OSError) as exc:
            if self.strict and type(exc).__name__ == "AppError":
                raise
            return Reply(self.party_id, task.kind, task.round, failure=f"{type(exc).__name__}: {exc}",
                         seconds=time.perf_counter() - start)

    def fit(self, task: Task):
        """Train on local data and run the update pipeline."""
        seed = round_seed(self.seed, self.party_id, task.round)
        gen = torch.Generator().manual_seed(seed)
        task = replace(task, state=self.pipeline.decode_model(task.state, task.config))  # downlink codec
        hooks = self.tables.hooks(task.config.extra.get("client_hooks"))  # SCAFFOLD's correction, …
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

            update = dp_fit(self.trainer, start_state, self.data.train, task.config, gen, self.state)
        else:
            update = self.trainer.fit(start_state, self.data.train, task.config, gen, grad_hooks, self.context)
        for hook in hooks:
            update = hook.finish(self, task, update)
        if shared is not None:
            keep = set(shared)
            own = self.trainer.model.state_dict()
            self.state["private"] = {k: own[k].detach().cpu().numpy().copy() for k in own if k not in keep}
        ctx = StepContext(self.party_id, task.round, np.random.default_rng(seed), self.state, task.state,
                          task.config.extra)
        return self.pipeline.encode(update, ctx)

    def evaluate(self, task: Task):
        """Evaluate the given model on the held-out split (no examples when the party holds none out)."""
        state = task.state
        private = self.state.get("private")
        if task.config.extra.get("personalized") and private:
            state = {**task.state, **private}  # FedPer/FedBN: evaluate the personalised model
        data = self.data.eval_source()
        if data is None:  # nothing held out: this party adds no weight to federated evaluation
            return EvalResult(float("nan"), None, 0)
        return self.trainer.evaluate(state, data, self.context)
