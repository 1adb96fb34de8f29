"""Model definitions and a registry by name."""

from pollen.models import cnn, mlp  # noqa: F401  (registers the models)
from pollen.models.augment import get_augmentation
from pollen.models.registry import available_models, build_model, default_model_for, register

__all__ = ["available_models", "build_model", "default_model_for", "get_augmentation", "register"]
