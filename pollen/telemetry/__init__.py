"""Events from the round loop and the sinks that subscribe to them."""

from pollen.telemetry.events import EventBus, PartyReplied, RoundCompleted, RoundStarted, RunCompleted, RunStarted
from pollen.telemetry.history import HistorySink, read_history

__all__ = ["EventBus", "HistorySink", "PartyReplied", "RoundCompleted", "RoundStarted", "RunCompleted",
           "RunStarted", "read_history"]
