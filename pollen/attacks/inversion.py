"""Gradient inversion: reconstruct a party's training images from the update it sent.

- DLG: Zhu, Liu and Han, "Deep Leakage from Gradients", NeurIPS 2019 (optimise dummy inputs so
  that their gradient matches the observed one).
- iDLG: Zhao, Mopuri and Bilen, "iDLG: Improved Deep Leakage from Gradients", 2020 (with one
  example and cross-entropy, the true label is the only negative entry of the last bias' gradient).
- Inverting gradients: Geiping, Bauermeister, Dröge and Moeller, "Inverting Gradients — How easy
  is it to break privacy in federated learning?", NeurIPS 2020 (cosine distance between
  gradients + total-variation prior, Adam on the dummy input).

Attacker's knowledge (an honest-but-curious coordinator looking at one party's update): the
global model the party started from, the architecture, the local learning rate, that the party
took ONE plain-SGD step on ONE batch (so ``Δ = −lr · ∇L``), and the batch size. Labels are
inferred (iDLG) for a batch of one, or given for larger batches (stated in the result). The
attacker does not know the party's data, and sees only what reaches the coordinator: the
party's own update (no protection or DP noise) or the sum of several parties' updates (secure
aggregation / HE reveal only the sum).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call

from pollen.errors import ConfigError


def observed_gradient(delta: Mapping[str, np.ndarray], lr: float, names: list[str]) -> list[torch.Tensor]:
    """The gradient a one-step SGD update reveals: ``g = −Δ / lr`` for each parameter in ``names``."""
    if lr <= 0:
        raise ConfigError(f"the local learning rate must be positive to invert an update; got {lr}")
    return [torch.as_tensor(-np.asarray(delta[n], dtype=np.float32) / lr) for n in names]


def infer_label(last_bias_grad: torch.Tensor) -> int:
    """iDLG: for one example, the last layer's bias gradient is ``softmax − onehot``; its only
    negative entry is the label."""
    return int(torch.argmin(last_bias_grad))


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV of images ``(B, C, H, W)``."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def psnr(x_hat: torch.Tensor, x: torch.Tensor, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(range² / MSE)``, over the whole batch."""
    mse = float(((x_hat - x) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(data_range**2 / mse)


@dataclass(frozen=True)
class Reconstruction:
    """What the attack produced.

    Attributes:
        images: reconstructed inputs ``(B, C, H, W)`` (unordered w.r.t. the true batch when B > 1).
        labels: the labels used (inferred or given).
        labels_inferred: True when the labels came from the gradient (iDLG).
        gradient_distance: the final cosine distance between dummy and observed gradients.
    """

    images: torch.Tensor
    labels: torch.Tensor
    labels_inferred: bool
    gradient_distance: float


def invert_gradient(model: nn.Module, params: Mapping[str, torch.Tensor], target: list[torch.Tensor],
                    input_shape: tuple[int, ...], batch: int, labels: torch.Tensor | None, steps: int,
                    generator: torch.Generator, lr: float = 0.1, tv: float = 1e-4) -> Reconstruction:
    """Optimise a dummy batch until its gradient at ``params`` points like ``target``.

    Args:
        model: the architecture (its own weights are not used).
        params: the global model's parameters by name (in the order of ``target``).
        target: the observed gradient, one tensor per entry of ``params``.
        input_shape: shape of one input ``(C, H, W)``.
        batch: the party's batch size.
        labels: the batch's labels, or None to infer them (batch of one only).
        steps: Adam iterations.
        generator: seeds the dummy initialisation.
        lr, tv: Adam step size and total-variation weight.
    """
    names = list(params)
    inferred = labels is None
    if labels is None:
        if batch != 1:
            raise ConfigError(f"labels can only be inferred for a batch of 1 (iDLG); got batch {batch}: pass the labels")
        labels = torch.tensor([infer_label(target[-1])])
    fixed = {k: v.detach() for k, v in params.items()}
    dummy = torch.randn((batch, *input_shape), generator=generator).requires_grad_(True)
    opt = torch.optim.Adam([dummy], lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[int(steps * f) for f in (0.375, 0.625, 0.875)], gamma=0.1)
    t_flat = torch.cat([t.flatten() for t in target])
    model.eval()
    dist = torch.tensor(1.0)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        weights = {k: v.requires_grad_(True) for k, v in ((k, v.clone()) for k, v in fixed.items())}
        loss = nn.functional.cross_entropy(functional_call(model, weights, (dummy,)), labels)
        grads = torch.autograd.grad(loss, [weights[k] for k in names], create_graph=True)
        g_flat = torch.cat([g.flatten() for g in grads])
        dist = 1 - nn.functional.cosine_similarity(g_flat, t_flat, dim=0)
        (dist + tv * total_variation(dummy)).backward()
        opt.step()
        sched.step()
    return Reconstruction(dummy.detach(), labels, inferred, float(dist.detach()))


def best_match_psnr(x_hat: torch.Tensor, x: torch.Tensor, data_range: float) -> float:
    """Mean PSNR after matching each true image to its closest reconstruction (order is lost)."""
    scores = []
    for i in range(len(x)):
        scores.append(max(psnr(x_hat[j : j + 1], x[i : i + 1], data_range) for j in range(len(x_hat))))
    return float(np.mean(scores))
