"""Local training (``Trainer``) and the party runtime (``LocalParty``)."""

from pollen.client.data import DatasetSource, LoaderSource, PartyData, Shard
from pollen.client.party import ClientHook, LocalParty, PartyTables, round_seed
from pollen.client.trainer import Trainer, load_numpy_state, state_to_numpy

__all__ = ["ClientHook", "DatasetSource", "LoaderSource", "LocalParty", "PartyData", "PartyTables", "Shard", "Trainer",
           "load_numpy_state", "round_seed", "state_to_numpy"]
