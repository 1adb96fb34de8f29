"""Control commands on a live coordinator, through the HTTP API: a pause really pauses (the round
loop waits between rounds), a changed learning rate reaches the parties of the next round, a
removed party is no longer sampled, a stop ends the run after a checkpoint, and every command is
in the run's history with who made it."""

from __future__ import annotations

import json

import pytest

from ui_helpers import CONTROL, READ, LiveSim, need  # noqa: E402

need("fastapi", "ui")
need("httpx", "dev")

from fastapi.testclient import TestClient  # noqa: E402

from pollen.errors import ConfigError  # noqa: E402
from pollen.server.checkpoint import Checkpointer  # noqa: E402
from pollen.telemetry.events import RoundCompleted, RoundStarted  # noqa: E402
from pollen.telemetry.history import party_metric  # noqa: E402
from pollen.ui.api import create_app  # noqa: E402
from pollen.ui.runs import RunsIndex  # noqa: E402


class OnRound:
    """Calls ``fn`` from the round loop when round ``n`` completes (a point in the run, no timing)."""

    def __init__(self, n, fn):
        self.n, self.fn, self.started = n, fn, []

    def __call__(self, event):
        if isinstance(event, RoundStarted):
            self.started.append((event.round, event.parties))
        if isinstance(event, RoundCompleted) and event.round == self.n:
            self.fn()


def serve(tmp_path, tokens, sim):
    index = RunsIndex(tmp_path / "runs")
    index.add_live(sim.cfg.run.name, sim.live, sim.control)
    return TestClient(create_app(index, tokens))


def test_pause_settings_remove_resume(tmp_path, tokens):
    box = {}

    def pause_after_round_2():
        r = box["client"].post("/api/runs/live/pause", headers=CONTROL)
        assert r.status_code == 200, r.text
        assert r.json()["status"]["state"] == "pausing"  # the current round finishes first

    hook = OnRound(2, pause_after_round_2)
    sim = LiveSim(tmp_path / "runs", "live", rounds=5, callbacks=[hook])
    client = box["client"] = serve(tmp_path, tokens, sim)
    sim.start()
    assert sim.control.wait_for("paused", timeout=120)

    # The loop waits between rounds 2 and 3: nothing after round 2 started.
    run = client.get("/api/runs/live", headers=READ).json()
    assert run["status"] == "paused" and run["control"]["state"] == "paused"
    assert [r for r, _ in hook.started] == [1, 2]
    assert [r["round"] for r in client.get("/api/runs/live/rounds", headers=READ).json()] == [1, 2]

    # Settings are validated with the run's config model before anything is queued.
    for bad in ({"lr": -1}, {"epochs": 0}, {"parties_per_round": 9}, {"round_timeout": 0}):
        r = client.post("/api/runs/live/settings", json=bad, headers=CONTROL)
        assert r.status_code == 422, (bad, r.text)
    assert client.post("/api/runs/live/settings", json={"momentum": 0.9}, headers=CONTROL).status_code == 422
    assert client.post("/api/runs/live/parties/99/remove", headers=CONTROL).status_code == 422
    assert sim.control.status()["pending"] == []

    assert client.post("/api/runs/live/settings", json={"lr": 0.5, "epochs": 2, "parties_per_round": 2},
                       headers=CONTROL).status_code == 200
    assert client.post("/api/runs/live/parties/1/remove", headers=CONTROL).status_code == 200
    assert [r for r, _ in hook.started] == [1, 2]  # still paused: commands queue until the loop applies them
    r = client.post("/api/runs/live/resume", headers=CONTROL)
    assert r.status_code == 200, r.text
    sim.join()

    history = [json.loads(line) for line in (sim.result.run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["round"] for r in history] == [1, 2, 3, 4, 5]
    # What parties were given (they report it: party metrics, under the record's own namespace).
    assert [party_metric(r, "train_lr") for r in history] == pytest.approx([0.05, 0.05, 0.5, 0.5, 0.5])
    assert [party_metric(r, "train_epochs") for r in history] == [1, 1, 2, 2, 2]
    for rnd, parties in hook.started[2:]:
        assert len(parties) == 2 and "1" not in parties, (rnd, parties)
    assert all(len(p) == 4 for _, p in hook.started[:2])
    # Every command is in the history with who made it (token name @ caller's address).
    applied = history[2]["control"]
    assert [c["command"] for c in applied] == ["pause", "reconfigure", "remove", "resume"]
    assert all(c["by"].startswith("alice@") for c in applied)
    assert applied[1]["args"] == {"lr": 0.5, "epochs": 2, "parties_per_round": 2}
    log = [json.loads(line) for line in (sim.result.run_dir / "control.jsonl").read_text().splitlines()]
    assert [c["command"] for c in log] == ["pause", "reconfigure", "remove", "resume"]
    # The run is over: commands are refused, reads still work.
    assert client.post("/api/runs/live/pause", headers=CONTROL).status_code == 422
    assert client.get("/api/runs/live", headers=READ).json()["status"] == "finished"
    parties = {p["id"]: p for p in client.get("/api/runs/live/parties", headers=READ).json()}
    assert parties["1"]["state"] == "removed" and parties["0"]["metrics"]["train_lr"] == pytest.approx(0.5)


def test_stop_ends_after_a_checkpoint_and_readmit(tmp_path, tokens):
    box = {}

    def at_round_1():
        c = box["client"]
        assert c.post("/api/runs/s/parties/2/remove", headers=CONTROL).status_code == 200
        assert c.post("/api/runs/s/parties/2/readmit", headers=CONTROL).status_code == 200
        assert c.post("/api/runs/s/stop", headers=CONTROL).status_code == 200

    hook = OnRound(1, at_round_1)
    sim = LiveSim(tmp_path / "runs", "s", rounds=6, callbacks=[hook])
    client = box["client"] = serve(tmp_path, tokens, sim)
    sim.start()
    sim.join()
    folder = sim.result.run_dir
    assert [r["round"] for r in sim.result.history] == [1]
    done, _, _, meta = Checkpointer(folder).load()  # the newest checkpoint that verifies
    assert done == meta["round"] == 1  # the checkpoint of the last round ran is there to --resume from
    assert (folder / "model.safetensors").exists() and (folder / "summary.json").exists()
    assert client.get("/api/runs/s", headers=READ).json()["status"] == "stopped"
    log = [json.loads(line)["command"] for line in (folder / "control.jsonl").read_text().splitlines()]
    assert log == ["remove", "readmit", "stop"]
    assert sim.control.removed == frozenset()


def test_pause_before_a_round_and_stop_while_paused(digits_cfg):
    """The queue alone (no HTTP): pause and stop are applied by the loop, in order."""
    from pollen.server.control import Control

    control = Control(digits_cfg())
    control.submit("pause", "test")
    assert control.status()["state"] == "pausing"
    control.submit("resume", "test")
    assert control.status()["state"] == "running"  # a resume cancels a pause not yet applied
    with pytest.raises(ConfigError, match="unknown command"):
        control.submit("explode", "test")
    with pytest.raises(ConfigError, match="takes no arguments"):
        control.submit("pause", "test", party="1")
    with pytest.raises(ConfigError, match="lr"):
        control.validate_settings({"lr": 1000})
    assert control.validate_settings({"round_timeout": 30}) == {"round_timeout": 30.0}


def test_epochs_cannot_change_under_dp_sgd(digits_cfg):
    from pollen.server.control import Control

    control = Control(digits_cfg(privacy={"dp_sgd": True, "delta": 1e-5, "noise_multiplier": 1.0}))
    with pytest.raises(ConfigError, match="dp-sgd"):
        control.validate_settings({"epochs": 3})
    assert control.validate_settings({"lr": 0.1}) == {"lr": 0.1}


def test_start_a_run_from_a_config(tmp_path, tokens):
    from pollen.ui.launcher import Launcher

    index = RunsIndex(tmp_path / "runs")
    launcher = Launcher(index)
    client = TestClient(create_app(index, tokens, launcher))
    toml = '[data]\ndataset = "digits"\nparties = 3\n[federation]\nrounds = 2\n[run]\nname = "started"\n'
    assert client.post("/api/runs", json={"toml": toml}, headers=READ).status_code == 403
    bad = client.post("/api/runs", json={"toml": toml.replace("parties = 3", "parties = 0")}, headers=CONTROL)
    assert bad.status_code == 422 and "data.parties" in bad.json()["detail"]
    assert client.post("/api/runs", json={"toml": "[data"}, headers=CONTROL).status_code == 422
    r = client.post("/api/runs", json={"toml": toml}, headers=CONTROL)
    assert r.status_code == 202, r.text
    assert r.json()["run"] == "started"
    launcher.wait(300)
    assert launcher.errors == {}
    folder = tmp_path / "runs" / "started"
    assert (folder / "summary.json").exists()
    first = json.loads((folder / "control.jsonl").read_text().splitlines()[0])
    assert first["command"] == "start" and first["by"].startswith("alice@")
    assert client.get("/api/runs/started", headers=READ).json()["status"] == "finished"
    again = client.post("/api/runs", json={"config": {"data": {"dataset": "digits", "parties": 3},
                                                      "run": {"name": "started"}}}, headers=CONTROL)
    assert again.status_code == 422 and "exists already" in again.json()["detail"]
