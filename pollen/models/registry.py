"""Models by name: ``build_model("fedavg_cnn", input_shape=(1, 28, 28), num_classes=10)``."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from pollen.errors import ModelError
from pollen.models import cnn, mlp, scatter

Builder = Callable[[tuple[int, ...], int], nn.Module]
# name -> builder(input_shape, num_classes): one explicit table (a user's own model is an app's model())
_REGISTRY: dict[str, Builder] = {
    "fedavg_cnn": cnn.fedavg_cnn, "cifar_cnn": cnn.cifar_cnn, "small_cnn": cnn.small_cnn, "dp_cnn": cnn.dp_cnn,
    "scatter_linear": scatter.scatter_linear,
    "mlp": mlp.mlp, "logreg": mlp.logreg, "emnist_cnn": cnn.emnist_cnn, "emnist_cnn_dropout": cnn.emnist_cnn_dropout,
}


def available_models() -> list[str]:
    """Names accepted by ``build_model``."""
    return sorted(_REGISTRY)


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build a registered model.

    Raises:
        ModelError: unknown name, or an input shape the model cannot take.
    """
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(available_models())}")
    return _REGISTRY[name](tuple(input_shape), int(num_classes))


def default_model_for(input_shape: tuple[int, ...]) -> str:
    """The model a dataset gets when the user names none."""
    if len(input_shape) == 1:
        return "mlp"
    if input_shape[-1] == 32 and input_shape[0] == 3:
        return "cifar_cnn"
    if input_shape[-1] >= 28:
        return "fedavg_cnn"
    return "small_cnn"
