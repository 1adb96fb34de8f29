"""Convolutional models.

- ``fedavg_cnn``: the CNN of McMahan et al. 2017, "Communication-Efficient Learning of Deep
  Networks from Decentralized Data" (AISTATS): conv5x5 32 → pool → conv5x5 64 → pool → FC 512 → FC.
- ``cifar_cnn``: the seed's "FederatedCNN" for CIFAR-10: two conv blocks with BatchNorm and a
  512-unit classifier with dropout.
- ``small_cnn``: a small CNN for tiny images (8×8 digits) used in fast tests.
- ``emnist_cnn``: the TFF EMNIST tutorial's CNN (the seed's): conv3x3 32 → pool → FC 128 → FC.
- ``emnist_cnn_dropout``: the CNN with dropout of Reddi et al. 2021, "Adaptive Federated
  Optimization" (ICLR), TFF's ``create_conv_dropout_model``: conv3x3 32 → conv3x3 64 → pool →
  dropout 0.25 → FC 128 → dropout 0.5 → FC.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pollen.errors import ModelError


def _image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ModelError(f"{name} needs image input (C, H, W); got shape {input_shape}. Use 'mlp' for tabular data.")
    return input_shape  # type: ignore[return-value]


class FedAvgCNN(nn.Module):
    """McMahan et al. 2017 CNN ("same" padding), 1,663,370 parameters on 28×28×1."""

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 5, padding=2)
        self.conv2 = nn.Conv2d(32, 64, 5, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(64 * (height // 4) * (width // 4), 512)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))  # (B, 32, H/2, W/2)
        x = self.pool(torch.relu(self.conv2(x)))  # (B, 64, H/4, W/4)
        x = torch.relu(self.fc1(x.flatten(1)))  # (B, 512)
        return self.fc2(x)  # (B, classes)


class CifarCNN(nn.Module):
    """The seed's FederatedCNN: Conv(3→64) BN ReLU Pool · Conv(64→128) BN ReLU Pool · FC 512 · Dropout · FC."""

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(128 * (height // 4) * (width // 4), 512), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))  # (B, classes)


class SmallCNN(nn.Module):
    """Conv 3×3 16 → BN → pool → FC 64 → FC, for 8×8 images."""

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * (height // 2) * (width // 2), 64)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)  # (B, 16, H/2, W/2)
        return self.head(torch.relu(self.fc1(x.flatten(1))))


def fedavg_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return FedAvgCNN(*_image_shape("fedavg_cnn", input_shape), num_classes)


def cifar_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return CifarCNN(*_image_shape("cifar_cnn", input_shape), num_classes)


def small_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return SmallCNN(*_image_shape("small_cnn", input_shape), num_classes)


class EmnistCNN(nn.Module):
    """The TFF tutorial's CNN: Conv(32, 3×3, valid) ReLU MaxPool2 · FC 128 ReLU · FC."""

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 32, 3), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(32 * ((height - 2) // 2) * ((width - 2) // 2), 128), nn.ReLU(),
                                        nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))  # (B, classes)


class EmnistDropoutCNN(nn.Module):
    """Reddi et al.'s EMNIST CNN: Conv(32) Conv(64) MaxPool2 Dropout(0.25) · FC 128 Dropout(0.5) · FC."""

    def __init__(self, in_channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Dropout(0.25))
        self.classifier = nn.Sequential(nn.Linear(64 * ((height - 4) // 2) * ((width - 4) // 2), 128), nn.ReLU(),
                                        nn.Dropout(0.5), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))  # (B, classes)


def emnist_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return EmnistCNN(*_image_shape("emnist_cnn", input_shape), num_classes)


def emnist_cnn_dropout(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return EmnistDropoutCNN(*_image_shape("emnist_cnn_dropout", input_shape), num_classes)
