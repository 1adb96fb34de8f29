"""Built-in models (by name) and the built-in datasets written as an app (``builtin``)."""

from pollen.models.augment import get_augmentation
from pollen.models.registry import available_models, build_model, default_model_for

__all__ = ["available_models", "build_model", "default_model_for", "get_augmentation"]
