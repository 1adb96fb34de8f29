"""Canaries for the one-run audit (``pollen.privacy.audit``): where they go in, how they are scored.

The unit of privacy decides the canary (Steinke, Nasr, Jagielski 2023, Section 6; for federated
learning, Andrew, Kairouz, Oh, Oprea, McMahan, Suriyakumar, "One-shot Empirical Privacy
Estimation for Federated Learning", ICLR 2024):

- **record** (DP-SGD, or no DP): a canary is a training example with a wrong label, copied from a
  party's own data: an example it holds, relabelled at random. Each canary belongs to a party
  drawn at random and is added to that party's training data with probability ½. The auditor
  sees what the threat model lets it see, each party's update (the release DP-SGD protects; no
  credit is taken for the sampling of parties, so it may know who trained when), and scores a
  canary by how much its party's updates lowered the canary's loss:
  Σ_rounds [loss(θ_r, canary) − loss(θ_r + Δ_party, canary)]. Under secure aggregation it sees
  only the sum, and scores with that.
- **party** (party-level DP): m parties drawn at random are canary slots; with probability ½ a
  slot's party is replaced by a canary party whose update is a secret random direction uᵢ (far
  longer than any clip norm, so it is clipped to exactly C·uᵢ), else it stays the party it was.
  The auditor sees the released aggregates only (the accountant relies on the sampling of
  parties being secret, so it must not use which rounds a canary was sampled in) and scores
  ⟨Σ_r Δ_r, uᵢ⟩, the projection of everything the coordinator released on the canary's direction.

The canaries' inclusion and directions come from a generator seeded by the run seed: they are the
auditor's secret, not the mechanism's randomness, and a rerun repeats them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from pollen.errors import ConfigError
from pollen.privacy.audit import AuditResult, audit_scores
from pollen.transforms.base import UpdateStep
from pollen.types import ModelState, Update, is_float

CANARY_LENGTH = 1e6  # a canary party's update norm before clipping: any clip norm cuts it to C·u
AUDIT_SEED = 0xA0D17


def unit_of(cfg: Any) -> str:
    """``party`` under party-level DP, else ``record``."""
    return "party" if cfg.privacy.client_dp != "off" else "record"


class AuditPlan:
    """Which canaries exist, which are in, and their scores so far (one per run, inline simulation).

    Args:
        unit: ``record`` or ``party``.
        canaries: m.
        party_ids: the federation's parties.
        seed: the run seed.
        rounds: planned rounds (the bound is computed after the last).
        delta: δ of the bound.
        confidence: of the bound.
        model: builds a model of the run's architecture (for the canaries' losses).
    """

    def __init__(self, unit: str, canaries: int, party_ids: Sequence[str], seed: int, rounds: int, delta: float,
                 confidence: float, model: Callable[[], torch.nn.Module]) -> None:
        if unit not in ("record", "party"):
            raise ConfigError(f"audit unit must be record or party; got {unit!r}")
        rng = np.random.default_rng([seed, AUDIT_SEED])
        self.unit, self.m, self.rounds = unit, int(canaries), int(rounds)
        self.delta, self.confidence, self._model_fn = delta, confidence, model
        self.included = rng.random(self.m) < 0.5
        self.scores = np.zeros(self.m)
        ids = list(party_ids)
        if unit == "party":
            if self.m > len(ids):
                raise ConfigError(f"--audit-canaries {self.m} canary parties cannot fit in a federation of {len(ids)} "
                                  "parties; use at most a tenth of the parties")
            self.slot_party = [ids[i] for i in rng.choice(len(ids), self.m, replace=False)]
            self.direction_seeds = rng.integers(0, 2**63, self.m)
        else:
            self.slot_party = [ids[i] for i in rng.integers(0, len(ids), self.m)]
            self.pick = rng.random(self.m)  # which of its party's examples a canary copies
            self.shift = rng.random(self.m)  # which wrong label it gets
        self.by_party: dict[str, list[int]] = {}
        for i, p in enumerate(self.slot_party):
            self.by_party.setdefault(p, []).append(i)
        self.records: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # slot -> (x (1, …), y (1,))
        self.total: ModelState | None = None  # party unit: Σ of the released aggregates
        self.result: AuditResult | None = None
        self._model: torch.nn.Module | None = None

    # ------------------------------------------------------------ record canaries
    def add_records(self, party_id: str, data: Any, num_classes: int) -> Any:
        """The party's data with its included canary records added (a new ``PartyData``).

        Raises:
            ConfigError: data that is not in-memory ``(x, y)`` with class labels.
        """
        from pollen.client.data import PartyData, Shard

        slots = self.by_party.get(party_id, [])
        if self.unit != "record" or not slots:
            return data
        if not isinstance(data.train, Shard):
            raise ConfigError("a record-level audit adds canary examples to in-memory (x, y) data; this party's "
                              f"data is a {type(data.train).__name__}")
        x, y = data.train.tensors()
        if y.dim() != 1 or y.dtype not in (torch.int64, torch.int32) or len(y) == 0:
            raise ConfigError("a record-level audit needs class labels (integer targets of shape (N,)) to make "
                              "mislabelled canaries")
        add_x, add_y = [], []
        for i in slots:
            j = int(self.pick[i] * len(y))
            wrong = (int(y[j]) + 1 + int(self.shift[i] * (num_classes - 1))) % num_classes
            cx, cy = x[j : j + 1].clone(), torch.tensor([wrong], dtype=y.dtype)
            self.records[i] = (cx, cy)
            if self.included[i]:
                add_x.append(cx)
                add_y.append(cy)
        if not add_x:
            return data
        return PartyData(Shard(torch.cat([x, *add_x]), torch.cat([y, *add_y])), data.val)

    def _losses(self, state: Mapping[str, np.ndarray], slots: Sequence[int]) -> np.ndarray:
        from pollen.client.trainer import load_numpy_state

        if self._model is None:
            self._model = self._model_fn()
            self._model.eval()
        load_numpy_state(self._model, state, strict=False)
        x = torch.cat([self.records[i][0] for i in slots])
        y = torch.cat([self.records[i][1] for i in slots])
        with torch.no_grad():
            return torch.nn.functional.cross_entropy(self._model(x), y, reduction="none").numpy()

    def observe_updates(self, reference: Mapping[str, np.ndarray], updates: Sequence[Update],
                        parties: Sequence[str]) -> None:
        """Score record canaries with each party's update (or, under a secure sum, the one sum)."""
        if self.unit != "record":
            return
        if len(updates) == len(parties):
            pairs = [(p, u) for p, u in zip(parties, updates)]
        else:  # a secure sum: only the aggregate is visible, for every party's canaries
            pairs = [(p, updates[0]) for p in parties]
        for party, update in pairs:
            slots = [i for i in self.by_party.get(party, []) if i in self.records]
            if not slots:
                continue
            after = {k: reference[k] + update.delta[k] if k in update.delta and is_float(reference[k]) else v
                     for k, v in reference.items()}
            self.scores[slots] += self._losses(reference, slots) - self._losses(after, slots)

    # ------------------------------------------------------------ party canaries
    def direction(self, slot: int, like: Mapping[str, np.ndarray]) -> ModelState:
        """Canary ``slot``'s secret unit direction over the float tensors of ``like``."""
        rng = np.random.default_rng(int(self.direction_seeds[slot]))
        parts = {k: rng.standard_normal(v.shape) for k, v in like.items() if is_float(v)}
        norm = np.sqrt(sum(float(np.sum(p * p)) for p in parts.values()))
        return {k: (p / norm).astype(like[k].dtype) for k, p in parts.items()}

    def canary_slot(self, party_id: str) -> int | None:
        """The slot of an included canary party (None for every other party)."""
        if self.unit != "party":
            return None
        slots = [i for i in self.by_party.get(party_id, []) if self.included[i]]
        return slots[0] if slots else None

    def observe_aggregate(self, delta: Mapping[str, np.ndarray]) -> None:
        """Party unit: add a released aggregate to the running sum."""
        if self.unit != "party":
            return
        floats = {k: np.asarray(v, dtype=np.float64) for k, v in delta.items() if is_float(v)}
        self.total = floats if self.total is None else {k: self.total[k] + floats[k] for k in floats}

    # ------------------------------------------------------------ the bound
    def finish(self) -> AuditResult:
        """Score what is left to score and bound ε."""
        if self.unit == "party" and self.total is not None:
            for i in range(self.m):
                u = self.direction(i, self.total)
                self.scores[i] = sum(float(np.sum(self.total[k] * u[k])) for k in u)
        self.result = audit_scores(self.scores, self.included, self.delta, self.confidence, unit=self.unit)
        return self.result


class CanaryTrainer:
    """A canary party's ``Trainer``: sends ``CANARY_LENGTH · u`` instead of training.

    Args:
        inner: the party's real trainer (for everything else).
        plan: the audit plan.
        slot: the canary's slot.
    """

    def __init__(self, inner: Any, plan: AuditPlan, slot: int) -> None:
        self.inner, self.plan, self.slot = inner, plan, slot

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def fit(self, global_state: Mapping[str, np.ndarray], data: Any, config: Any, generator: Any,
            grad_hooks: tuple = (), context: Any = None) -> Update:
        names = config.shared_names if config.shared_names is not None else tuple(global_state)
        like = {k: global_state[k] for k in names}
        u = self.plan.direction(self.slot, like)
        delta = {k: (u[k] * CANARY_LENGTH if k in u else np.zeros_like(v)) for k, v in like.items()}
        return Update(delta=delta, num_examples=1, metrics={"canary": 1.0})


class AuditObserver(UpdateStep):
    """The auditor's seat on the coordinator: sees what the threat model lets it see.

    Placed after the noise steps (its ``after_aggregate`` sees the noised aggregate) and before
    masking (its ``combine`` runs after a secure sum was recovered). Passes everything through.
    """

    name = "audit"
    stage = "observe"
    linear = True

    def __init__(self, plan: AuditPlan) -> None:
        self.plan = plan
        self._reference: Mapping[str, np.ndarray] | None = None

    def decode_against(self, update: Update, reference: Mapping[str, np.ndarray] | None) -> Update:
        self._reference = reference  # the global model of the round (the same for every reply)
        return update

    def combine(self, updates: list[Update], parties: Sequence[str], round: int, transport: Any) -> list[Update]:
        if self._reference is not None:
            self.plan.observe_updates(self._reference, updates, parties)
        return updates

    def after_aggregate(self, delta: ModelState, round: int, num_updates: int) -> ModelState:
        self.plan.observe_aggregate(delta)
        return delta

    def report(self, round: int) -> dict[str, Any]:
        if round < self.plan.rounds:
            return {}
        return self.plan.finish().record()


def plan_audit(cfg: Any, party_ids: Sequence[str], model: Callable[[], torch.nn.Module]) -> AuditPlan:
    """The audit ``cfg.privacy`` asks for (``--audit-canaries m``)."""
    p = cfg.privacy
    return AuditPlan(unit_of(cfg), p.audit_canaries, party_ids, cfg.run.seed, cfg.federation.rounds,
                     p.delta if p.delta is not None else 1e-5, p.audit_confidence, model)
