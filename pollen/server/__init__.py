"""The coordinator: round loop, collection with deadlines, checkpoints."""

from pollen.server.checkpoint import Checkpointer
from pollen.server.coordinator import Coordinator, collect, weighted_eval

__all__ = ["Checkpointer", "Coordinator", "collect", "weighted_eval"]
