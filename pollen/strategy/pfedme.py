"""pFedMe: Dinh, Tran and Nguyen 2020, "Personalized Federated Learning with Moreau Envelopes"
(NeurIPS), Algorithm 1. Each party keeps a personalised model θᵢ tied to its local copy wᵢ of the
global model by a Moreau envelope::

    for each mini-batch D (local round):
        θᵢ ≈ argmin_θ fᵢ(θ; D) + λ/2 ‖θ − wᵢ‖²        K gradient steps, personal lr
        wᵢ ← wᵢ − η λ (wᵢ − θᵢ)                         η: the local lr
    send Δᵢ = wᵢ − w;   w ← w + β · mean(Δᵢ)            β: the server lr (β = 1: plain average)

θᵢ starts from the global model each round (as in the authors' code) and is what the party's
personalised evaluation uses (``fed_accuracy``); wᵢ is what travels. Means are plain, not
example-weighted, as in the paper. The paper's MNIST settings are λ = 15, K = 5, personal lr
0.09, η = 0.005.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from pollen.client.data import batch_size_of
from pollen.client.party import PERSONAL_KEY, ClientHook, LocalParty
from pollen.client.trainer import as_source, forward, load_numpy_state
from pollen.errors import ModelError, StrategyError
from pollen.strategy.base import ClientConfig, NameFilter, Sampler, ServerOptimizer, Strategy, WeightedMean
from pollen.types import ModelState, Task, Update

EXTRA_KEY = "pfedme"  # RoundConfig.extra: {"lambda": λ, "steps": K, "personal_lr": …}


def personal_state(party: LocalParty) -> ModelState:
    """The party model's current tensors, less the frozen ones (what a personal model holds)."""
    frozen = set(party.trainer.frozen_names())
    own = party.trainer.model.state_dict()
    return {k: own[k].detach().cpu().numpy().copy() for k in own if k not in frozen}


class PFedMeClient(ClientHook):
    """The party side: K proximal steps on θ per batch, then wᵢ moves toward θ (replaces the loop)."""

    def fit(self, party: LocalParty, task: Task, state: ModelState, generator: torch.Generator) -> Update:
        settings = task.config.extra[EXTRA_KEY]
        lam, steps, personal_lr = float(settings["lambda"]), int(settings["steps"]), float(settings["personal_lr"])
        trainer, eta = party.trainer, task.config.lr
        model = trainer.model
        load_numpy_state(model, state, strict=False)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        local = [p.detach().clone() for p in params]  # wᵢ, starting at the global model
        opt = torch.optim.SGD(params, lr=personal_lr)
        data = as_source(party.data.train)
        total = torch.zeros((), dtype=torch.float64)
        seen = batches = 0
        for xb, yb in trainer.batches(data, task.config, generator):
            for _ in range(steps):  # θ ≈ argmin f(θ; D) + λ/2 ‖θ − wᵢ‖²
                opt.zero_grad(set_to_none=True)
                loss = trainer.loss_fn(forward(model, xb), yb)
                loss.backward()
                with torch.no_grad():
                    for p, w in zip(params, local):
                        if p.grad is not None:
                            p.grad.add_(p - w, alpha=lam)
                opt.step()
            with torch.no_grad():
                for p, w in zip(params, local):
                    w.add_(p - w, alpha=eta * lam)  # wᵢ ← wᵢ − ηλ(wᵢ − θ)
            b = batch_size_of(xb)
            total += loss.detach().double().cpu() * b
            seen += b
            batches += 1
        mean_loss = float(total) / max(seen, 1)
        if not np.isfinite(mean_loss):
            raise ModelError(f"pFedMe's local training diverged (loss {mean_loss}); lower --personal-lr or the lr")
        party.state[PERSONAL_KEY] = personal_state(party)  # θᵢ: the personalised model
        with torch.no_grad():
            for p, w in zip(params, local):
                p.copy_(w)
        return Update(delta=trainer.delta(state, task.config), num_examples=len(data),
                      metrics={"train_loss": mean_loss, "steps": float(batches * steps)})


def pfedme(sampler: Sampler, client: ClientConfig, server_lr: float = 1.0, lam: float = 15.0, steps: int = 5,
           personal_lr: float | None = None) -> Strategy:
    """pFedMe with regularisation ``lam`` (λ), ``steps`` (K) inner steps per batch at ``personal_lr``
    (default: the local lr), and server mixing β = ``server_lr``."""
    if lam <= 0 or steps < 1:
        raise StrategyError(f"pfedme needs λ > 0 and K ≥ 1 inner steps; got λ={lam}, K={steps}")
    settings = {"lambda": lam, "steps": steps, "personal_lr": personal_lr if personal_lr is not None else client.base.lr}
    hooks = tuple(client.extra.get("client_hooks", ())) + ("pfedme",)
    client = replace(client, extra={**client.extra, "client_hooks": list(hooks), EXTRA_KEY: settings})
    return Strategy("pfedme", sampler, client, WeightedMean(weighted=False), ServerOptimizer(server_lr), NameFilter())
