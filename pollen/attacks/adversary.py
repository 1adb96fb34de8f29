"""Simulated malicious parties: the attacker runs the honest client code, then sends a poisoned
update instead of its own (``poison.py``). It plugs in where a party's ``Trainer`` is: a malicious
party's ``LocalParty`` gets a ``MaliciousTrainer`` that wraps the shared trainer, so the rest of
the party runtime (update pipeline, transports, the process pool) is unchanged.

Colluding attacks (ALIE, IPM) need the benign updates of the attackers sampled in the round, as in
Baruch et al. 2019, where the attackers estimate the benign mean and deviation from their own
correct updates. The ``Collusion`` computes those on demand from the attackers' own data (each
colluder's update is exactly the one it would compute itself: same data, same seed) and caches
them for the round, so in one process each is computed once. The attackers know which of them
the sampler picked in a round (they coordinate out of band); ``n`` in ALIE's z_max is the number
of parties sampled in the round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pollen.attacks import poison
from pollen.client.party import round_seed
from pollen.client.trainer import Trainer
from pollen.errors import ConfigError
from pollen.types import RoundConfig, Update


@dataclass(frozen=True)
class AttackSpec:
    """One simulated attack.

    Attributes:
        kind: one of ``poison.ATTACKS``.
        scale: signflip's s (default 1) or scaling's boost (default 10).
        sigma: gaussian's σ.
        epsilon: ipm's ε.
        z: alie's z (None: z_max from n and f).
        num_classes: classes, for label flipping.
    """

    kind: str
    scale: float | None = None
    sigma: float = 1.0
    epsilon: float = 0.5
    z: float | None = None
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.kind not in poison.ATTACKS:
            raise ConfigError(f"unknown attack {self.kind!r}; choose one of: {', '.join(poison.ATTACKS)}")

    @property
    def effective_scale(self) -> float:
        """The scale used (the attack's default when none was given)."""
        if self.scale is not None:
            return self.scale
        return 10.0 if self.kind == "scaling" else 1.0


# (party id) -> (x, y) training tensors of that party
DataOf = Callable[[str], tuple[torch.Tensor, torch.Tensor]]
# (round) -> ids of the parties sampled in that round
SampledIn = Callable[[int], Sequence[str]]


@dataclass
class Collusion:
    """The attackers' shared knowledge: who they are, their data, their benign updates this round.

    Attributes:
        malicious: ids of all malicious parties.
        data_of: the training tensors of a party.
        sampled_in: the parties the sampler picks in a round.
        seed: the run seed (each colluder trains with its own round seed).
    """

    malicious: frozenset[str]
    data_of: DataOf
    sampled_in: SampledIn
    seed: int = 0
    _cache: dict[tuple[int, str], Update] = field(default_factory=dict)

    def colluders(self, round: int) -> tuple[list[str], int]:
        """(malicious parties sampled in ``round``, parties sampled in ``round``)."""
        sampled = list(self.sampled_in(round))
        return [p for p in sampled if p in self.malicious], len(sampled)

    def benign(self, trainer: Trainer, party_id: str, global_state: Mapping[str, np.ndarray],
               config: RoundConfig) -> Update:
        """The honest update ``party_id`` computes in ``config.round`` (cached for the round)."""
        key = (config.round, party_id)
        if key not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k[0] == config.round}
            x, y = self.data_of(party_id)
            gen = torch.Generator().manual_seed(round_seed(self.seed, party_id, config.round))
            self._cache[key] = trainer.fit(global_state, (x, y), config, gen)
        return self._cache[key]


class MaliciousTrainer:
    """A ``Trainer`` stand-in for one malicious party: trains honestly (or on flipped labels) and
    returns the poisoned update. Everything else is the wrapped trainer's.

    Args:
        inner: the honest trainer (shared with the other parties of the process).
        party_id: the attacker.
        spec: the attack.
        collusion: shared knowledge of the attackers (needed for alie and ipm).
    """

    def __init__(self, inner: Trainer, party_id: str, spec: AttackSpec, collusion: Collusion) -> None:
        self.inner = inner
        self.party_id = party_id
        self.spec = spec
        self.collusion = collusion

    def __getattr__(self, name: str) -> Any:  # model, evaluate, augment, … come from the honest trainer
        return getattr(self.inner, name)

    def fit(self, global_state: Mapping[str, np.ndarray], data: Any, config: RoundConfig,
            generator: torch.Generator, grad_hooks: tuple = (), context: Any = None) -> Update:
        """Train as the attack prescribes and return the poisoned update (tagged ``malicious``)."""
        from pollen.client.data import Shard
        from pollen.client.trainer import as_source

        spec = self.spec
        data = as_source(data)
        if spec.kind in poison.FLIPS_LABELS:
            if not isinstance(data, Shard):
                raise ConfigError(f"attack {spec.kind!r} flips labels of in-memory (x, y) data; this party's data is a "
                                  f"{type(data).__name__}")
            x, y = data.tensors()
            data = Shard(x, poison.flip_labels(y, spec.num_classes))
        if spec.kind in poison.COLLUDING:
            own = self.collusion.benign(self.inner, self.party_id, global_state, config)
            delta = self._colluding(own, global_state, config)
        else:
            own = self.inner.fit(global_state, data, config, generator, grad_hooks, context)
            delta = self._alone(own, config)
        return own.with_(delta=delta, metrics={**own.metrics, "malicious": 1.0})

    def _alone(self, own: Update, config: RoundConfig):
        spec = self.spec
        if spec.kind == "signflip":
            return poison.signflip(own.delta, spec.effective_scale)
        if spec.kind == "scaling":
            return poison.scale_update(own.delta, spec.effective_scale)
        if spec.kind == "gaussian":
            rng = np.random.default_rng([round_seed(self.collusion.seed, self.party_id, config.round), 0x6A55])
            return poison.gaussian(own.delta, spec.sigma, rng)
        return own.delta  # labelflip: the honest update of the flipped data

    def _colluding(self, own: Update, global_state: Mapping[str, np.ndarray], config: RoundConfig):
        colluders, n = self.collusion.colluders(config.round)
        if self.party_id not in colluders:  # asked outside the sampler's plan: act on its own update
            colluders = [self.party_id]
            n = max(n, 2)
        benign = [self.collusion.benign(self.inner, p, global_state, config).delta for p in colluders]
        if self.spec.kind == "ipm":
            return poison.ipm(own.delta, benign, self.spec.epsilon)
        z = self.spec.z if self.spec.z is not None else poison.alie_z_max(n, len(colluders))
        return poison.alie(own.delta, benign, z)
