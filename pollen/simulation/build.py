"""Build the pieces of a federation from a ``RunConfig``: dataset, party splits, model, trainer,
parties, strategy, server-side evaluator. Shared by simulation, the centralized baseline and the
deployed server/client, so that every mode trains the same thing."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from pollen.client.party import LocalParty, Shard
from pollen.client.trainer import Trainer, state_to_numpy
from pollen.config import RunConfig
from pollen.data import Dataset, load_dataset, partition, split_holdout
from pollen.models import build_model, default_model_for, get_augmentation
from pollen.strategy import ClientConfig, Sampler, Strategy, build_strategy
from pollen.transforms.base import Pipeline, empty_pipeline
from pollen.types import EvalResult, ModelState, RoundConfig


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (None: every core), then put back the caller's setting:
    ``simulate()`` and friends are library calls and must not leave a process-wide setting changed."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or cores())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def model_name(cfg: RunConfig, dataset: Dataset) -> str:
    """The model the run uses (the configured one, or the dataset's default)."""
    return cfg.model.model or default_model_for(dataset.input_shape)


def initial_state(cfg: RunConfig, dataset: Dataset) -> ModelState:
    """The global model at round 0: built with torch's RNG seeded by the run seed."""
    torch.manual_seed(cfg.run.seed)
    return state_to_numpy(make_model(cfg, dataset))


def make_model(cfg: RunConfig, dataset: Dataset) -> torch.nn.Module:
    """A fresh model for the run (BatchNorm → GroupNorm under DP-SGD, on every side alike)."""
    model = build_model(model_name(cfg, dataset), dataset.input_shape, dataset.num_classes)
    if cfg.privacy.dp_sgd:
        from pollen.privacy.dpsgd import make_private_model

        model = make_private_model(model)
    return model


def base_round_config(cfg: RunConfig) -> RoundConfig:
    """The round config before strategy schedules."""
    t = cfg.train
    from pollen.privacy.plan import dp_sgd_extra

    return RoundConfig(epochs=t.epochs, lr=t.lr, batch_size=t.batch_size, optimizer=t.optimizer,
                       momentum=t.momentum, weight_decay=t.weight_decay, extra=dp_sgd_extra(cfg))


def make_sampler(cfg: RunConfig) -> Sampler:
    """The configured party sampler."""
    f = cfg.federation
    return Sampler(fraction=f.fraction, count=f.parties_per_round, seed=cfg.run.seed)


def make_strategy(cfg: RunConfig) -> Strategy:
    """The configured strategy."""
    sampler = make_sampler(cfg)
    client = ClientConfig(base=base_round_config(cfg), lr_decay=cfg.train.lr_decay)
    return build_strategy(cfg, sampler, client)


def make_pipeline(cfg: RunConfig) -> Pipeline:
    """The update pipeline the config asks for, in the fixed order clip → noise → compress → mask.

    Each subsystem contributes its steps from its own config section (``privacy.steps_from_config``,
    ``compression.steps_from_config``); ``Pipeline`` sorts nothing and refuses a wrong order.
    """
    from pollen.compression import check_pipeline
    from pollen.compression import steps_from_config as compression_steps
    from pollen.privacy import steps_from_config as privacy_steps

    steps = [*privacy_steps(cfg, "before_compress"), *compression_steps(cfg), *privacy_steps(cfg, "after_compress")]
    pipeline = Pipeline(tuple(steps)) if steps else empty_pipeline()
    check_pipeline(pipeline)  # codecs under masking, error feedback with DP clipping
    return pipeline


@dataclass
class Federation:
    """A dataset split among parties, with everything needed to run them."""

    cfg: RunConfig
    dataset: Dataset
    parts: list[np.ndarray]  # training indices per party

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "Federation":
        """Load the dataset and split it as configured."""
        d = cfg.data
        dataset = load_dataset(d.dataset, d.data_dir)
        parts = partition(dataset, d.partition, d.parties, cfg.run.seed, alpha=d.alpha,
                          classes_per_party=d.classes_per_party)
        return cls(cfg, dataset, parts)

    @property
    def party_ids(self) -> list[str]:
        """Party ids, ``"0" … "N-1"``."""
        return [str(i) for i in range(len(self.parts))]

    @cached_property
    def x_train(self) -> torch.Tensor:
        return torch.from_numpy(self.dataset.x_train)

    @cached_property
    def y_train(self) -> torch.Tensor:
        return torch.from_numpy(self.dataset.y_train)

    def make_trainer(self) -> Trainer:
        """A trainer with a fresh model (one per process; reused for every party there)."""
        model = make_model(self.cfg, self.dataset)
        return Trainer(model, get_augmentation(self.cfg.model.augmentation))

    def make_parties(self, trainer: Trainer, ids: Iterable[str] | None = None,
                     pipeline: Pipeline | None = None) -> dict[str, LocalParty]:
        """The ``LocalParty`` runtimes for ``ids`` (all parties when None).

        With a simulated attack (``cfg.attack``) the malicious parties get a ``MaliciousTrainer``
        wrapping ``trainer`` (``pollen.attacks``); every process that builds parties builds the
        same attackers, so the process-pool backend simulates them too.
        """
        out = {}
        trainer_of = self._attack_trainers(trainer)
        for pid in (ids if ids is not None else self.party_ids):
            train, val = self.party_shards(pid)
            out[pid] = LocalParty(pid, train, trainer_of(pid), val, seed=self.cfg.run.seed, pipeline=pipeline)
        return out

    def party_shards(self, pid: str) -> tuple[Shard, Shard]:
        """(train, held-out) shards of one party (the held-out split cut by the run seed)."""
        idx = self.parts[int(pid)]
        holdout = self.cfg.data.holdout
        train_idx, val_idx = split_holdout(idx, holdout, self.cfg.run.seed + int(pid)) if holdout > 0 else (idx, idx[:0])
        return (Shard(self.x_train, self.y_train, torch.from_numpy(np.sort(train_idx))),
                Shard(self.x_train, self.y_train, torch.from_numpy(np.sort(val_idx))))

    def _attack_trainers(self, trainer: Trainer):
        """``pid -> trainer``: the honest one, or a ``MaliciousTrainer`` for a malicious party."""
        from pollen.attacks import Collusion, MaliciousTrainer, select_malicious, spec_from_config

        spec = spec_from_config(self.cfg, self.dataset.num_classes)
        if spec is None:
            return lambda pid: trainer
        bad = select_malicious(self.party_ids, self.cfg.attack.malicious_fraction, self.cfg.run.seed)
        sampler, everyone = make_sampler(self.cfg), self.party_ids
        collusion = Collusion(bad, lambda p: self.party_shards(p)[0].tensors(), lambda r: sampler.select(r, everyone),
                              seed=self.cfg.run.seed)
        return lambda pid: MaliciousTrainer(trainer, pid, spec, collusion) if pid in bad else trainer

    def make_evaluator(self, trainer: Trainer):
        """Server-side evaluation of a state on the full test set."""
        x = torch.from_numpy(self.dataset.x_test)
        y = torch.from_numpy(self.dataset.y_test)

        def evaluate(state: ModelState) -> EvalResult:
            return trainer.evaluate(state, x, y)

        return evaluate
