"""Record-level DP: DP-SGD in a party's local training, through Opacus.

Abadi et al., "Deep Learning with Differential Privacy" (CCS 2016): clip each example's gradient
to ``max_grad_norm``, add N(0, (σ·max_grad_norm)²) to the batch sum, average by the expected batch
size. Batches are Poisson samples (each example joins a step with probability q = B/n), which is
what the subsampled-Gaussian accountant assumes. Opacus' ``GradSampleModule`` and ``DPOptimizer``
(the two halves of ``PrivacyEngine.make_private``) do the per-example work; we draw the Poisson
batches ourselves as index masks on the party's in-memory tensors instead of a DataLoader.

Each party keeps its own accountant in its per-party state: the guarantee is for one party's
records, composed over the rounds it trained in (no credit is taken for the coordinator's
sampling of parties). Noise and batch sampling use a torch Generator seeded with 63 bits from
``os.urandom`` (Opacus' ``secure_mode`` needs torchcsprng, which is not available here).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from pollen.client.ledger import budget_of
from pollen.client.trainer import Trainer, load_numpy_state, make_optimizer
from pollen.errors import ConfigError, ModelError, PrivacyError, require
from pollen.privacy.accountant import make_accountant, noise_multiplier_for, participation_steps
from pollen.types import RoundConfig, Update

STATE_KEY = "dp_sgd"  # this module's entry in the party's state (durable: the accountant survives --resume)
# Per-example gradients held at once (Opacus keeps one gradient per example and parameter): a Poisson
# batch of 2,700 on the 3.3 M-parameter CIFAR CNN would take 35 GB; larger batches run in chunks.
GRAD_SAMPLE_BYTES = 1 << 30


def _opacus():
    return require("opacus", "dp", "DP-SGD (--dp-sgd)")


def make_private_model(model: nn.Module) -> nn.Module:
    """The model with layers Opacus cannot handle replaced (BatchNorm → GroupNorm)."""
    validators = require("opacus.validators", "dp", "DP-SGD (--dp-sgd)")
    if validators.ModuleValidator.is_valid(model):
        return model
    return validators.ModuleValidator.fix(model)


def secure_generator(device: torch.device | str = "cpu") -> torch.Generator:
    """A torch Generator on ``device`` seeded from the OS CSPRNG (``os.urandom``), never from the run
    seed. Opacus draws the noise on the parameters' device with it, so it must live there."""
    return torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)


def poisson_batches(n: int, sample_rate: float, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``steps`` Poisson batches of indices into ``n`` examples (each kept with ``sample_rate``)."""
    return [torch.nonzero(torch.rand(n, generator=generator) < sample_rate).squeeze(1) for _ in range(steps)]


def dp_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batches: Sequence[torch.Tensor], config: RoundConfig,
             noise_multiplier: float, max_grad_norm: float, expected_batch_size: int,
             generator: torch.Generator, augment_generator: torch.Generator | None = None,
             augment=None, loss_fn=None, grad_sample_bytes: int | None = None) -> dict[str, float]:
    """Run DP-SGD steps on ``model`` in place, one per batch of indices; returns training metrics.

    An empty batch still takes a step (noise only), as the accountant assumes. ``generator`` draws the
    noise: it must be on the model's device. Loss and accuracy add up on that device (no host sync
    per step). A Poisson batch whose per-example gradients would take more than ``grad_sample_bytes``
    (default ``GRAD_SAMPLE_BYTES``) is run in physical chunks that fit: each chunk's per-example
    gradients are clipped and summed, and the noise and the step come once, after the last chunk
    (Opacus' skipped steps) — the same update as one pass, in bounded memory.
    """
    opacus = _opacus()
    gsm = opacus.GradSampleModule(model)
    params = [p for p in gsm.parameters() if p.requires_grad]
    per_example = sum(p.numel() * p.element_size() for p in params)  # bytes of one example's gradients
    chunk = max(1, (GRAD_SAMPLE_BYTES if grad_sample_bytes is None else grad_sample_bytes) // max(per_example, 1))
    opt = opacus.optimizers.DPOptimizer(make_optimizer(params, config), noise_multiplier=noise_multiplier,
                                        max_grad_norm=max_grad_norm, expected_batch_size=expected_batch_size,
                                        generator=generator)
    track_accuracy = loss_fn is None
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    device = params[0].device if params else x.device
    total = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    # Opacus' hooks on the first layer fire although its input needs no grad: harmless, but torch
    # warns about it on every batch. Not ``warnings.catch_warnings()``: it restores the process-wide
    # filters on exit, under the feet of other parties training in threads of the same process.
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # re-adding replaces, never piles up
    try:
        gsm.train()
        for idx in batches:
            opt.zero_grad(set_to_none=True)
            if len(idx) == 0:
                for p in params:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            else:
                parts = idx.to(x.device, non_blocking=True).split(chunk)
                for j, part in enumerate(parts):
                    if j:  # the previous chunk's step was skipped: its clipped sum stays in summed_grad
                        opt.zero_grad(set_to_none=True)
                    xb, yb = x[part], y[part]
                    if augment is not None:
                        xb = augment(xb, augment_generator)
                    logits = gsm(xb)  # (b, classes)
                    loss = loss_fn(logits, yb)
                    loss.backward()
                    total += loss.detach().double() * len(part)
                    if track_accuracy:
                        correct += (logits.detach().argmax(1) == yb).sum()
                    if j < len(parts) - 1:
                        opt.signal_skip_step(do_skip=True)
                        opt.step()  # clip and add to summed_grad; no noise, no update yet
                seen += len(idx)
            opt.step()
    finally:
        opt.zero_grad(set_to_none=True)
        gsm._close()  # remove Opacus' hooks: the trainer's model is reused by other parties
    out = {"train_loss": float(total) / max(seen, 1), "steps": float(len(batches))}
    if track_accuracy:
        out["train_accuracy"] = int(correct) / max(seen, 1)
    return out


def _noise_multiplier(settings: Mapping[str, Any], q: float, steps: int, cache: MutableMapping[str, Any]) -> float:
    if settings.get("noise_multiplier") is not None:
        return float(settings["noise_multiplier"])
    key = f"{q:.12g}/{steps}/{settings['participations']}/{settings['target_epsilon']}/{settings['accountant']}"
    if key not in cache:
        cache[key] = noise_multiplier_for(settings["target_epsilon"], settings["delta"], q,
                                          steps * int(settings["participations"]), settings["accountant"])
    return cache[key]


def dp_fit(trainer: Trainer, global_state: Mapping[str, np.ndarray], data: Any,
           config: RoundConfig, generator: torch.Generator, party_state: MutableMapping[str, Any]) -> Update:
    """``Trainer.fit`` with DP-SGD: Poisson batches, per-example clipping, Gaussian noise, and
    this party's ε (``epsilon_record``; also ``epsilon`` when it is the run's headline) in the
    update's metrics.

    Raises:
        PrivacyError: this round would take the party past ``target_epsilon`` (it stops training).
    """
    from pollen.client.data import Shard
    from pollen.client.trainer import as_source

    settings = config.extra["dp_sgd"]
    data = as_source(data)
    if not isinstance(data, Shard):
        raise ConfigError("DP-SGD draws Poisson batches from in-memory tensors: return (x, y) tensors from your app's "
                          "load_data (a Dataset or DataLoader cannot be Poisson-sampled here)")
    if trainer.app_train is not None:
        raise ConfigError("DP-SGD replaces the local loop; your app's own train() cannot run under --dp-sgd")
    x, y = (t.to(trainer.device) for t in data.tensors())
    if config.proximal_mu > 0:
        raise ConfigError("DP-SGD does not support FedProx's proximal term (Opacus clips only the data loss); "
                          "use fedavg or another strategy without a proximal term")
    n = int(x.shape[0])
    if n == 0:
        raise ModelError("cannot train on an empty dataset")
    own = party_state.setdefault(STATE_KEY, {"history": [], "calibration": {}})
    rate = settings.get("sample_rate")  # the recipe's Poisson rate, or batch size / records
    if rate is None:
        q, steps = participation_steps(config.epochs, n, config.batch_size)
        batch = config.batch_size
    else:  # q and the steps do not depend on n: one record more or less changes neither
        q, steps = float(rate), int(math.ceil(config.epochs / float(rate)))
        batch = max(1, int(round(q * n)))  # the expected batch, Opacus' denominator
    sigma = _noise_multiplier(settings, q, steps, own["calibration"])
    target, delta = budget_of(party_state, settings)  # the party's own pinned budget, whatever the task asks
    accountant = make_accountant(settings["accountant"])
    accountant.load_state_dict({"history": own["history"]})
    accountant.step(sigma, q, steps)
    eps_after = accountant.get_epsilon(delta)
    if target is not None and eps_after > target * (1 + 1e-9):
        raise PrivacyError(f"privacy budget exhausted: training round {config.round} would spend ε={eps_after:.3f} "
                           f"> target {target} (δ={delta}); this party stops training")
    model = trainer.model
    load_numpy_state(model, global_state, strict=False)
    batches = poisson_batches(n, q, steps, secure_generator())  # indices: drawn on the CPU
    noise = secure_generator(trainer.device)  # Opacus draws the noise on the parameters' device
    metrics = dp_train(model, x, y, batches, config, sigma, settings["max_grad_norm"], batch, noise, generator,
                       trainer.augment, None if trainer.default_loss else trainer.loss_fn)
    if not math.isfinite(metrics["train_loss"]):
        raise ModelError(f"local DP-SGD diverged (loss {metrics['train_loss']}); lower the learning rate")
    own["history"] = accountant.state_dict()["history"]
    metrics.update(epsilon_record=eps_after, noise_multiplier=sigma)
    if settings["accountant"] != "rdp":
        rdp = make_accountant("rdp")
        rdp.load_state_dict({"history": own["history"]})
        metrics["epsilon_record_rdp"] = rdp.get_epsilon(delta)
    if settings.get("headline", True):
        metrics["epsilon"] = eps_after
    local = model.state_dict()
    names = config.shared_names if config.shared_names is not None else tuple(global_state)
    delta_state = {k: local[k].detach().cpu().numpy() - global_state[k] for k in names}
    return Update(delta=delta_state, num_examples=n, metrics=metrics)
