"""The update pipeline (clip → noise → compress → mask/encrypt) and its compatibility check."""

from pollen.transforms.base import Pipeline, StepContext, UpdateStep, check_pipeline, empty_pipeline

__all__ = ["Pipeline", "StepContext", "UpdateStep", "check_pipeline", "empty_pipeline"]
