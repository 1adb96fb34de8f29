"""Local training (``Trainer``) and the party runtime (``LocalParty``)."""

from pollen.client.party import LocalParty, Shard, round_seed
from pollen.client.trainer import Trainer, load_numpy_state, state_to_numpy

__all__ = ["LocalParty", "Shard", "Trainer", "load_numpy_state", "round_seed", "state_to_numpy"]
