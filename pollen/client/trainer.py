"""Local training: E epochs of mini-batch SGD/Adam on in-memory tensors.

Batches are slices of a tensor permuted once per epoch (no DataLoader, no per-sample Python); the
``nn.Module`` is built once and reused for every party a process hosts.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn as nn

from pollen.errors import ConfigError, ModelError
from pollen.models.augment import Augment
from pollen.types import EvalResult, ModelState, RoundConfig, Update

# A hook run after ``loss.backward()`` and before ``optimizer.step()`` (SCAFFOLD's correction, …).
GradHook = Callable[[nn.Module], None]


def state_to_numpy(model: nn.Module) -> ModelState:
    """A copy of the model's ``state_dict`` as numpy arrays (float and integer buffers by name)."""
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def load_numpy_state(model: nn.Module, state: Mapping[str, np.ndarray], strict: bool = True) -> None:
    """Copy ``state`` into the model's tensors in place (``state`` is never modified).

    Raises:
        ModelError: names or shapes that do not fit the model.
    """
    own = model.state_dict()
    if strict and set(own) != set(state):
        missing = sorted(set(own) - set(state))[:5]
        extra = sorted(set(state) - set(own))[:5]
        raise ModelError(f"state does not fit the model: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for name, value in state.items():
            if name not in own:
                raise ModelError(f"state has tensor {name!r}, which the model does not have")
            target = own[name]
            if tuple(target.shape) != tuple(value.shape):
                raise ModelError(f"tensor {name!r}: model has shape {tuple(target.shape)}, state has {value.shape}")
            target.copy_(torch.from_numpy(np.asarray(value)))


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(config: RoundConfig) -> contextlib.AbstractContextManager:
    """``torch.autocast('cpu', dtype)`` when ``config.extra["autocast"]`` asks for bf16/fp16
    (set by ``--autocast``); a no-op context otherwise. fp16 runs without loss scaling.

    Raises:
        ConfigError: an unknown dtype name.
    """
    name = config.extra.get("autocast", "off")
    if name in (None, "off"):
        return contextlib.nullcontext()
    if name not in AUTOCAST_DTYPES:
        raise ConfigError(f"autocast dtype {name!r} is unknown; choose off, {', '.join(AUTOCAST_DTYPES)}")
    return torch.autocast("cpu", dtype=AUTOCAST_DTYPES[name])


def make_optimizer(params, config: RoundConfig) -> torch.optim.Optimizer:
    """The local optimizer a round config asks for."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ConfigError(f"unknown local optimizer {config.optimizer!r}; choose 'sgd' or 'adam'")


class Trainer:
    """Fits and evaluates one reusable model on a party's tensors.

    Args:
        model: the network; reused across parties and rounds.
        augment: optional batch augmentation applied to each training batch.
        eval_batch_size: batch size for evaluation (128 was fastest on a 2-core CPU).
    """

    def __init__(self, model: nn.Module, augment: Augment | None = None, eval_batch_size: int = 128) -> None:
        self.model = model
        self.augment = augment
        self.eval_batch_size = eval_batch_size
        self.loss_fn = nn.CrossEntropyLoss()

    def fit(
        self,
        global_state: Mapping[str, np.ndarray],
        x: torch.Tensor,
        y: torch.Tensor,
        config: RoundConfig,
        generator: torch.Generator,
        grad_hooks: tuple[GradHook, ...] = (),
    ) -> Update:
        """Train from ``global_state`` on ``(x, y)`` and return the delta ``local − global``.

        Args:
            global_state: the model to start from (not modified).
            x: inputs ``(N, ...)``; y: int64 labels ``(N,)``.
            config: epochs, optimizer, lr, batch size, proximal mu, shared names.
            generator: seeded source of shuffling and augmentation randomness.
            grad_hooks: functions run on the model between backward and step.
        """
        model = self.model
        load_numpy_state(model, global_state, strict=False)
        model.train()
        n = int(x.shape[0])
        if n == 0:
            raise ModelError("cannot train on an empty dataset")
        params = [p for p in model.parameters() if p.requires_grad]
        opt = make_optimizer(params, config)
        mu = config.proximal_mu
        anchors = [p.detach().clone() for p in params] if mu > 0 else None
        bs = config.batch_size
        total_loss, correct, seen, steps = 0.0, 0, 0, 0
        for _ in range(config.epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, bs):
                idx = order[start : start + bs]
                xb, yb = x[idx], y[idx]
                if self.augment is not None:
                    xb = self.augment(xb, generator)
                opt.zero_grad(set_to_none=True)
                with autocast(config):
                    logits = model(xb)
                    loss = self.loss_fn(logits, yb)
                if anchors is not None:
                    # FedProx (Li et al. 2020): + mu/2 · ||w − w_global||²
                    prox = sum(((p - a) ** 2).sum() for p, a in zip(params, anchors))
                    (loss + 0.5 * mu * prox).backward()
                else:
                    loss.backward()
                for hook in grad_hooks:
                    hook(model)
                opt.step()
                steps += 1
                total_loss += float(loss.detach()) * len(idx)
                correct += int((logits.detach().argmax(1) == yb).sum())
                seen += len(idx)
        local = model.state_dict()
        names = config.shared_names if config.shared_names is not None else tuple(global_state)
        delta = {k: local[k].detach().numpy() - global_state[k] for k in names}
        loss_avg = total_loss / max(seen, 1)
        if not math.isfinite(loss_avg):
            raise ModelError(f"local training diverged (loss {loss_avg}); lower the learning rate")
        metrics = {"train_loss": loss_avg, "train_accuracy": correct / max(seen, 1), "steps": float(steps)}
        return Update(delta=delta, num_examples=n, metrics=metrics)

    @torch.no_grad()
    def evaluate(self, state: Mapping[str, np.ndarray] | None, x: torch.Tensor, y: torch.Tensor) -> EvalResult:
        """Loss and accuracy of ``state`` (or the current model when None) on ``(x, y)``."""
        model = self.model
        if state is not None:
            load_numpy_state(model, state, strict=False)
        model.eval()
        n = int(x.shape[0])
        total_loss, correct = 0.0, 0
        for start in range(0, n, self.eval_batch_size):
            xb, yb = x[start : start + self.eval_batch_size], y[start : start + self.eval_batch_size]
            logits = model(xb)
            total_loss += float(nn.functional.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
        return EvalResult(loss=total_loss / max(n, 1), accuracy=correct / max(n, 1), num_examples=n)
