"""The party runtime: a party's data, its state kept between rounds, and the handling of tasks.

The same ``LocalParty`` answers tasks whichever transport carried them (in-process, process pool,
gRPC), so the party side of a round is written once.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from pollen.client.trainer import Trainer
from pollen.errors import PollenError
from pollen.transforms.base import Pipeline, StepContext, empty_pipeline
from pollen.types import Reply, Task


# Extra task kinds (secure-aggregation stages, …): kind -> handler(party, task) -> Reply.
# Registered by the subsystem that defines the kind; the party runtime stays one class.
TASK_HANDLERS: dict[str, Callable[["LocalParty", Task], Reply]] = {}


def party_index(party_id: str) -> int:
    """A stable integer for a party id (the number itself for numeric ids)."""
    return int(party_id) if party_id.isdigit() else zlib.crc32(party_id.encode())


def round_seed(seed: int, party_id: str, round: int) -> int:
    """The seed of one party's randomness in one round (shuffling, augmentation, codecs)."""
    return int(np.random.SeedSequence([seed, party_index(party_id), round]).generate_state(1)[0])


class LocalParty:
    """One party: its training data, an optional held-out split, and per-party state.

    Args:
        party_id: the party's id.
        x, y: training tensors ``(N, ...)`` and int64 labels ``(N,)``.
        trainer: the (shared) trainer that runs the model.
        x_val, y_val: the party's held-out split for federated evaluation (may be empty).
        seed: the run seed; each round's randomness is derived from it.
        pipeline: client-side update steps (clip, noise, compress, mask).
    """

    def __init__(
        self,
        party_id: str,
        x: torch.Tensor,
        y: torch.Tensor,
        trainer: Trainer,
        x_val: torch.Tensor | None = None,
        y_val: torch.Tensor | None = None,
        seed: int = 0,
        pipeline: Pipeline | None = None,
    ) -> None:
        self.party_id = party_id
        self.x, self.y = x, y
        self.x_val, self.y_val = x_val, y_val
        self.trainer = trainer
        self.seed = seed
        self.pipeline = pipeline or empty_pipeline()
        self.state: dict[str, Any] = {}  # kept between rounds (control variates, residuals, …)

    @property
    def num_examples(self) -> int:
        """Training examples this party holds."""
        return int(self.x.shape[0])

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
        start_state = task.state
        shared = task.config.shared_names
        private = self.state.get("private")
        if shared is not None and private:
            # FedBN / FedPer: this party's own copies of the tensors that are not shared.
            start_state = {**task.state, **private}
        update = self.trainer.fit(start_state, self.x, self.y, task.config, gen)
        if shared is not None:
            keep = set(shared)
            own = self.trainer.model.state_dict()
            self.state["private"] = {k: own[k].detach().numpy().copy() for k in own if k not in keep}
        ctx = StepContext(self.party_id, task.round, np.random.default_rng(seed), self.state, task.state)
        return self.pipeline.encode(update, ctx)

    def evaluate(self, task: Task):
        """Evaluate the given model on the held-out split (the training data when there is none)."""
        state = task.state
        private = self.state.get("private")
        if task.config.extra.get("personalized") and private:
            state = {**task.state, **private}  # FedPer/FedBN: evaluate the personalised model
        if self.x_val is not None and len(self.x_val) > 0:
            return self.trainer.evaluate(state, self.x_val, self.y_val)
        return self.trainer.evaluate(state, self.x, self.y)
