"""SCAFFOLD: Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning" (ICML), Algorithm 1 with option II. The server keeps a control variate c, each party i
its own cᵢ (in ``LocalParty.state``, kept between rounds). Every local step is corrected::

    y ← y − η_l (g(y) − cᵢ + c)                       (party, K steps)
    cᵢ⁺ = cᵢ − c + (x − y) / (K η_l)                   (option II)
    send Δyᵢ = y − x and Δcᵢ = cᵢ⁺ − cᵢ;  cᵢ ← cᵢ⁺
    x ← x + η_g · mean_S(Δyᵢ)                          (server)
    c ← c + |S|/N · mean_S(Δcᵢ)

c travels to parties with the global model under ``scaffold.c.<name>``, and Δcᵢ comes back under
the same name: the reply's delta holds the change of every tensor the task sent, as for any other
strategy, so a transport that checks reply names against the task (gRPC) accepts it. Twice
FedAvg's bytes each way, as in the paper. Means are plain (not
example-weighted), as in the paper. The correction is exact for plain local SGD; with local
momentum or Adam, (x − y)/(K η_l) is the paper's approximation of the mean local gradient.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import torch

from pollen.client.party import ClientHook, LocalParty
from pollen.client.trainer import GradHook
from pollen.errors import StrategyError
from pollen.strategy.base import (
    ClientConfig,
    NameFilter,
    Sampler,
    ServerOptimizer,
    Strategy,
    WeightedMean,
    apply_delta,
    is_statistic,
)
from pollen.types import ModelState, Task, Update

C_PREFIX = "scaffold.c."  # server control variate, sent with the model
DC_PREFIX = C_PREFIX  # a party's control-variate change Δcᵢ, in its delta under c's name
PARTY_KEY = "scaffold_ci"  # the party's own control variate in LocalParty.state


def split_prefixed(state: Mapping[str, np.ndarray], prefix: str) -> tuple[ModelState, ModelState]:
    """``(entries without prefix, {name: value} of the prefixed entries)``."""
    rest = {k: v for k, v in state.items() if not k.startswith(prefix)}
    tagged = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return rest, tagged


def option_two(ci: Mapping[str, np.ndarray], c: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray],
               steps: float, lr: float) -> ModelState:
    """cᵢ⁺ = cᵢ − c + (x − y)/(K η_l) with ``delta`` = y − x (pure)."""
    if steps <= 0 or lr <= 0:
        raise StrategyError(f"SCAFFOLD needs K > 0 local steps and lr > 0; got K={steps}, lr={lr}")
    return {k: (ci[k] - c[k] - delta[k] / (steps * lr)).astype(ci[k].dtype) for k in c}


class ScaffoldClient(ClientHook):
    """The party side: correct each gradient by c − cᵢ, then update cᵢ (option II)."""

    def prepare(self, party: LocalParty, task: Task, state: ModelState) -> tuple[ModelState, tuple[GradHook, ...]]:
        model_state, c = split_prefixed(state, C_PREFIX)
        if not c:
            raise StrategyError("scaffold: the task carries no server control variate (scaffold.c.*)")
        ci = party.state.get(PARTY_KEY) or {k: np.zeros_like(v) for k, v in c.items()}
        params = dict(party.trainer.model.named_parameters())
        pairs = [(params[k], torch.from_numpy(np.asarray(c[k] - ci[k], dtype=np.float32))) for k in c if k in params]

        def correct(model: torch.nn.Module) -> None:
            for p, corr in pairs:
                if p.grad is not None:
                    p.grad.add_(corr)

        return model_state, (correct,)

    def finish(self, party: LocalParty, task: Task, update: Update) -> Update:
        _, c = split_prefixed(task.state, C_PREFIX)
        ci = party.state.get(PARTY_KEY) or {k: np.zeros_like(v) for k, v in c.items()}
        ci_new = option_two(ci, c, update.delta, float(update.metrics.get("steps", 0)), task.config.lr)
        party.state[PARTY_KEY] = ci_new
        dc = {f"{DC_PREFIX}{k}": ci_new[k] - ci[k] for k in c}
        return update.with_(delta={**update.delta, **dc})



class ScaffoldServer(ServerOptimizer):
    """The server side: x ← x + η_g Δy, c ← c + (|S|/N) Δc.

    Args:
        lr: the global step size η_g.
        participation: |S|/N, the fraction of parties sampled per round.
    """

    name = "scaffold"

    def __init__(self, lr: float = 1.0, participation: float = 1.0) -> None:
        if not 0 < participation <= 1:
            raise StrategyError(f"SCAFFOLD participation |S|/N must be in (0, 1]; got {participation}")
        super().__init__(lr)
        self.participation = participation

    def init(self, global_state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {f"c/{k}": np.zeros_like(x) for k, x in global_state.items() if not is_statistic(k, x)}

    def broadcast(self, global_state: ModelState, state: Mapping[str, np.ndarray]) -> ModelState:
        _, c = split_prefixed(state, "c/")
        return {**global_state, **{f"{C_PREFIX}{k}": v for k, v in c.items()}}

    def step(
        self, global_state: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray]
    ) -> tuple[ModelState, dict[str, np.ndarray]]:
        dy, dc = split_prefixed(delta, DC_PREFIX)
        new, out = dict(global_state), dict(state)
        for k, d in dy.items():
            x = global_state[k]
            new[k] = apply_delta(x, d, 1.0 if is_statistic(k, x) else self.lr)
        for k, d in dc.items():
            c = state[f"c/{k}"]
            out[f"c/{k}"] = (c + self.participation * d).astype(c.dtype, copy=False)
        return new, out


def scaffold(sampler: Sampler, client: ClientConfig, server_lr: float = 1.0, participation: float = 1.0) -> Strategy:
    """SCAFFOLD (option II) with global step ``server_lr`` and sampling fraction ``participation``."""
    hooks = tuple(client.extra.get("client_hooks", ())) + ("scaffold",)
    client = replace(client, extra={**client.extra, "client_hooks": list(hooks)})
    return Strategy("scaffold", sampler, client, WeightedMean(weighted=False), ScaffoldServer(server_lr, participation),
                    NameFilter())
