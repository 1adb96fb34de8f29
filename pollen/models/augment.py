"""Batch augmentation written in torch (torchvision has no CPU build here).

All functions act on a whole batch ``(B, C, H, W)`` at once, with randomness from a passed-in
``torch.Generator``: no per-sample Python. The generator may live on the CPU while the batch is on
a GPU: the random draws are moved to the batch's device (a few bytes per sample).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def random_crop(x: torch.Tensor, size: int, padding: int, gen: torch.Generator) -> torch.Tensor:
    """RandomCrop(size, padding) with zero padding, a different offset per sample."""
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
    dev = x.device
    dy = torch.randint(0, h + 2 * padding - size + 1, (b,), generator=gen).to(dev)
    dx = torch.randint(0, w + 2 * padding - size + 1, (b,), generator=gen).to(dev)
    span = torch.arange(size, device=dev)[None, :]
    rows = dy[:, None] + span  # (B, size)
    cols = dx[:, None] + span  # (B, size)
    idx_b = torch.arange(b, device=dev)[:, None, None, None]
    idx_c = torch.arange(c, device=dev)[None, :, None, None]
    return padded[idx_b, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


def random_hflip(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each sample left-right with probability ``p``."""
    flip = (torch.rand(x.shape[0], generator=gen) < p).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Per-channel ``(x - mean) / std``."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device)[None, :, None, None]
    s = torch.tensor(std, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - m) / s


def cifar_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The seed's CIFAR-10 training augmentation: RandomCrop(32, padding=4) + horizontal flip.

    Inputs are already normalised by the loader; zero padding of normalised data pads with the mean.
    """
    return random_hflip(random_crop(x, x.shape[-1], 4, gen), gen)


AUGMENTATIONS: dict[str, Augment | None] = {"none": None, "cifar": cifar_augment}


def get_augmentation(name: str) -> Augment | None:
    """Look up an augmentation by name (``none`` or ``cifar``)."""
    from pollen.errors import ConfigError

    if name not in AUGMENTATIONS:
        raise ConfigError(f"unknown augmentation {name!r}; choose one of: {', '.join(AUGMENTATIONS)}")
    return AUGMENTATIONS[name]
