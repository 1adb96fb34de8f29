"""Ditto: Li, Hu, Beirami and Smith 2021, "Ditto: Fair and Robust Federated Learning Through
Personalization" (ICML), Algorithm 1. The global model w is trained by FedAvg as usual; besides it
each party keeps a personal model vᵢ, never sent, trained on its own data towards the global model
of the round::

    wᵢ ← local training from w (FedAvg's),  send Δᵢ = wᵢ − w
    vᵢ ← vᵢ − η_v (∇fᵢ(vᵢ) + λ (vᵢ − w))     the same number of local epochs
    w  ← w + mean_S(Δᵢ)                     example-weighted, as FedAvg

vᵢ starts as the first global model the party receives. λ trades personalisation (λ → 0: local
training only) against the global model (λ → ∞: vᵢ = w); the paper picks λ from {0.01, 0.1, 1, 2}.
Each party's personalised evaluation (``fed_accuracy``) uses vᵢ. Local compute is twice FedAvg's;
the bytes are FedAvg's.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from pollen.client.party import PERSONAL_KEY, ClientHook, LocalParty, round_seed
from pollen.errors import StrategyError
from pollen.strategy.base import ClientConfig, NameFilter, Sampler, ServerOptimizer, Strategy, WeightedMean
from pollen.strategy.pfedme import personal_state
from pollen.types import Task, Update

EXTRA_KEY = "ditto"  # RoundConfig.extra: {"lambda": λ, "personal_lr": η_v}


class DittoClient(ClientHook):
    """The party side: after FedAvg's local training, train vᵢ with a pull λ(vᵢ − w) to the global w."""

    def finish(self, party: LocalParty, task: Task, update: Update) -> Update:
        settings = task.config.extra[EXTRA_KEY]
        lam = float(settings["lambda"])
        model = party.trainer.model
        names = dict(model.named_parameters())
        anchors = [(p, torch.from_numpy(np.asarray(task.state[k], dtype=np.float32)).to(p.device))
                   for k, p in names.items() if p.requires_grad and k in task.state]

        def pull(_: torch.nn.Module) -> None:  # ∇ of λ/2 ‖v − w‖²
            for p, w in anchors:
                if p.grad is not None:
                    p.grad.add_(p.detach() - w, alpha=lam)

        start = {**task.state, **party.state.get(PERSONAL_KEY, {})}
        config = task.config.with_(lr=float(settings["personal_lr"]), proximal_mu=0.0, shared_names=None)
        gen = torch.Generator().manual_seed(round_seed(party.seed, party.party_id, task.round) ^ 0xD1770)
        party.trainer.fit(start, party.data.train, config, gen, (pull,), party.context)
        party.state[PERSONAL_KEY] = personal_state(party)
        return update


def ditto(sampler: Sampler, client: ClientConfig, server_lr: float = 1.0, lam: float = 0.1,
          personal_lr: float | None = None) -> Strategy:
    """FedAvg for the global model plus a personal model per party pulled to it with strength ``lam``
    (λ), trained at ``personal_lr`` (default: the local lr)."""
    if lam < 0:
        raise StrategyError(f"ditto needs λ ≥ 0; got {lam}")
    settings = {"lambda": lam, "personal_lr": personal_lr if personal_lr is not None else client.base.lr}
    hooks = tuple(client.extra.get("client_hooks", ())) + ("ditto",)
    client = replace(client, extra={**client.extra, "client_hooks": list(hooks), EXTRA_KEY: settings})
    return Strategy("ditto", sampler, client, WeightedMean(), ServerOptimizer(server_lr), NameFilter())
