"""The parties page's live states, from the round loop's events and the transport's sessions:
connected, training, replied, late, dropped, refused, out of budget, removed — with last seen,
rounds taken part in, reported metrics, ε and bytes (no training: events made by hand, with the
failure texts the transports and the coordinator really use)."""

from __future__ import annotations

import pytest

from pollen.telemetry.events import (ControlApplied, PartyReplied, RoundCompleted, RoundStarted, RunCompleted,
                                     RunOpened, RunStarted)
from pollen.telemetry.live import LATE, LiveRun, party_state


@pytest.mark.parametrize("failure, state", [
    (LATE, "late"),
    ("party not connected", "dropped"),
    ("party lost: no heartbeat for 10.2 s", "dropped"),
    ("party left", "dropped"),
    ("party reconnected; its earlier task is lost", "dropped"),
    ("dropped out (simulated)", "dropped"),
    ("reply refused: update too large", "refused"),
    ("decode: ValueError: shape mismatch", "refused"),
    ("PrivacyError: privacy budget exhausted: training round 7 would spend ε=8.100 > 8.0", "out of budget"),
    ("worker process 1 died", "failed"),
])
def test_failure_texts_map_to_states(failure, state):
    assert party_state(failure) == state


def test_a_deployed_federation_round_by_round():
    sessions = {"a": {"alive": True, "last_seen": 1000.0}, "b": {"alive": True, "last_seen": 1000.0},
                "c": {"alive": True, "last_seen": 1000.0}}
    live = LiveRun(connected=lambda: sessions, simulated=False)
    live(RunOpened("/tmp/runs/x", {"data": {"parties": 3}}, "x"))
    assert {p["id"]: p["state"] for p in live.parties()} == {"a": "connected", "b": "connected", "c": "connected"}

    live(RunStarted(rounds=2, start_round=1, parties=3))
    live(RoundStarted(1, ("a", "b", "c")))
    assert {p["state"] for p in live.parties()} == {"training"}
    live(PartyReplied(1, "a", "fit", 0.5, None, {"loss": 0.7, "epsilon": 1.25}, 4000))
    live(PartyReplied(1, "b", "fit", 0.5, "PrivacyError: privacy budget exhausted", {}, 0))
    live(RoundCompleted(1, {"round": 1, "parties": ["a"], "parties_failed": ["b", "c"], "bytes_down": 9000,
                            "failures": {"b": "PrivacyError: privacy budget exhausted", "c": LATE},
                            "fed_accuracy_parties": {"a": 0.75}}))
    rows = {p["id"]: p for p in live.parties()}
    assert rows["a"]["state"] == "replied" and rows["a"]["rounds"] == 1 and rows["a"]["epsilon"] == 1.25
    assert rows["a"]["bytes_up"] == 4000 and rows["a"]["bytes_down"] == 3000  # its share of the round's downlink
    assert rows["a"]["metrics"] == {"loss": 0.7, "epsilon": 1.25, "held-out accuracy": 0.75}
    assert rows["a"]["last_seen"] >= 1000.0
    assert rows["b"]["state"] == "out of budget" and rows["b"]["rounds"] == 0
    assert rows["c"]["state"] == "late" and rows["c"]["failures"] == 1

    live(ControlApplied(2, "remove", {"party": "c"}, "alice@127.0.0.1", 0.0))
    sessions["b"]["alive"] = False  # no heartbeat: the transport marks it dead
    del sessions["a"]  # gone from the transport
    rows = {p["id"]: p for p in live.parties()}
    assert rows["c"]["state"] == "removed"
    assert rows["b"]["state"] == "out of budget"  # the budget is the reason that matters
    assert rows["a"]["state"] == "dropped"
    assert [c["command"] for c in live.control_log()] == ["remove"]

    live(RunCompleted({"round": 1}))
    assert live.summary()["state"] == "finished" and live.summary()["rounds_done"] == 1
    assert [r["round"] for r in live.rounds()] == [1] and live.rounds(after=1) == []
    assert set(rows["a"]) >= {"id", "state", "last_seen", "rounds", "metrics", "epsilon", "bytes_up", "bytes_down"}
    assert not {"update", "data", "weights"} & set(rows["a"])  # counts and metrics only
