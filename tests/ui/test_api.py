"""The dashboard's API on finished runs: every endpoint needs a token, a wrong or missing one gets
401 and nothing else, the read-only token cannot steer, GETs change nothing, and each endpoint
returns what the run folder holds (never a party's data or updates)."""

from __future__ import annotations

import json

import pytest

from ui_helpers import CONTROL, READ, need  # noqa: E402

need("fastapi", "ui")
need("httpx", "dev")

from fastapi.testclient import TestClient  # noqa: E402

from pollen.ui.api import create_app  # noqa: E402
from pollen.ui.auth import load_tokens, tokens_for, write_tokens  # noqa: E402
from pollen.ui.runs import RunsIndex  # noqa: E402

GETS = ["/api/whoami", "/api/runs", "/api/runs/a", "/api/runs/a/rounds", "/api/runs/a/config", "/api/runs/a/parties",
        "/api/runs/a/models", "/api/runs/a/models/final", "/api/compare?runs=a,b", "/api/openapi.json"]
POSTS = ["/api/runs/a/pause", "/api/runs/a/resume", "/api/runs/a/stop", "/api/runs/a/settings",
         "/api/runs/a/parties/0/remove", "/api/runs/a/parties/0/readmit", "/api/runs"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from pollen.simulation import simulate

    root = tmp_path_factory.mktemp("ui") / "runs"
    for name, extra in (("a", {}), ("b", {"strategy": "fedavgm"})):
        simulate(dataset="digits", parties=3, rounds=3, name=name, runs_dir=str(root), progress=False, **extra)
    return root


@pytest.fixture
def client(runs, tokens):
    return TestClient(create_app(RunsIndex(runs), tokens))


def snapshot(folder):
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": "r" * 20},
                                     {"Authorization": "Basic " + "r" * 20}])
def test_every_call_needs_a_token(client, headers):
    for path in GETS:
        r = client.get(path, headers=headers)
        assert r.status_code == 401, path
        assert r.json() == {"detail": "unauthorized"}  # nothing about the run, the route or the token
        assert r.headers["www-authenticate"] == "Bearer"
    for path in POSTS:
        r = client.post(path, json={"lr": "not a number"}, headers=headers)  # refused before the body is read
        assert r.status_code == 401, path
        assert r.json() == {"detail": "unauthorized"}


def test_read_token_reads_and_cannot_steer(client, runs):
    before = snapshot(runs)
    for path in GETS:
        assert client.get(path, headers=READ).status_code == 200, path
        assert client.get(path, headers=CONTROL).status_code == 200, path
    for path in POSTS:
        r = client.post(path, json={}, headers=READ)
        assert r.status_code == 403, path
        assert "control token" in r.json()["detail"]
    assert snapshot(runs) == before  # no GET (and no refused POST) changed anything on disk


def test_the_page_is_served_without_a_token(client):
    page = client.get("/")
    assert page.status_code == 200 and "Pollen dashboard" in page.text
    for asset in ("/static/app.js", "/static/style.css", "/static/vendor/uplot/uPlot.iife.min.js",
                  "/static/vendor/uplot/LICENSE"):
        assert client.get(asset).status_code == 200, asset


def test_runs_list_and_one_run(client):
    rows = {r["name"]: r for r in client.get("/api/runs", headers=READ).json()}
    assert set(rows) == {"a", "b"}
    a = rows["a"]
    assert a["status"] == "finished" and a["dataset"] == "digits" and a["strategy"] == "fedavg"
    assert rows["b"]["strategy"] == "fedavgm"
    assert a["rounds_done"] == 3 and a["rounds"] == 3 and a["metric"] == "accuracy"
    assert 0 < a["best"] <= 1 and a["best_round"] in (1, 2, 3) and a["seconds"] > 0
    assert a["protections"] == [] and a["controllable"] is False
    one = client.get("/api/runs/a", headers=READ).json()
    assert one["control"] is None and one["commands"] == []
    assert client.get("/api/runs/nope", headers=READ).status_code == 404
    assert client.get("/api/runs/..%2F..%2Fetc", headers=READ).status_code == 404


def test_rounds_config_parties_models(client, runs):
    history = [json.loads(line) for line in (runs / "a" / "history.jsonl").read_text().splitlines()]
    assert client.get("/api/runs/a/rounds", headers=READ).json() == history
    assert [r["round"] for r in client.get("/api/runs/a/rounds?after=2", headers=READ).json()] == [3]
    assert client.get("/api/runs/a/rounds?after=-1", headers=READ).status_code == 422
    cfg = client.get("/api/runs/a/config", headers=READ).json()
    assert cfg["data"]["dataset"] == "digits" and cfg["federation"]["rounds"] == 3
    parties = client.get("/api/runs/a/parties", headers=READ).json()
    assert [p["id"] for p in parties] == ["0", "1", "2"]
    assert all(p["rounds"] == 3 for p in parties)
    for p in parties:  # counts and metrics only
        assert set(p) <= {"id", "state", "rounds", "failures", "last_round", "reason", "metrics", "epsilon", "bytes_up",
                          "bytes_down", "last_seen"}
    models = client.get("/api/runs/a/models", headers=READ).json()
    assert [m["file"] for m in models] == ["checkpoint", "final"] and models[0]["round"] == 3
    blob = client.get("/api/runs/a/models/final", headers=READ)
    assert blob.content == (runs / "a" / "model.safetensors").read_bytes()
    assert client.get("/api/runs/a/models/optimizer", headers=READ).status_code == 404


def test_compare(client):
    out = client.get("/api/compare?runs=a,b", headers=READ).json()
    assert [r["name"] for r in out["runs"]] == ["a", "b"]
    assert set(out["rounds"]) == {"a", "b"} and len(out["rounds"]["b"]) == 3


def test_finished_runs_cannot_be_steered(client):
    r = client.post("/api/runs/a/pause", headers=CONTROL)
    assert r.status_code == 409 and "not steered by this process" in r.json()["detail"]
    r = client.post("/api/runs", json={"toml": "[data]\nparties = 2\n"}, headers=CONTROL)
    assert r.status_code == 409  # a dashboard without a launcher cannot start runs


def test_openapi_documents_every_endpoint(client):
    doc = client.get("/api/openapi.json", headers=READ).json()
    paths = doc["paths"]
    for path in ("/api/runs", "/api/runs/{run}", "/api/runs/{run}/rounds", "/api/runs/{run}/parties",
                 "/api/runs/{run}/models/{which}", "/api/runs/{run}/pause", "/api/runs/{run}/resume",
                 "/api/runs/{run}/stop", "/api/runs/{run}/settings", "/api/runs/{run}/parties/{party}/remove",
                 "/api/runs/{run}/parties/{party}/readmit", "/api/compare"):
        assert path in paths, path
    settings = doc["components"]["schemas"]["Settings"]["properties"]
    assert set(settings) == {"lr", "epochs", "parties_per_round", "round_timeout"}
    assert client.get("/openapi.json").status_code == 404 and client.get("/docs").status_code == 404


def test_token_files(tmp_path):
    from pollen.errors import ConfigError

    tokens, line = tokens_for(tmp_path / "t.toml")
    assert "written" in line and (tmp_path / "t.toml").stat().st_mode & 0o777 == 0o600
    again, line = tokens_for(tmp_path / "t.toml")
    assert again == tokens and "read from" in line
    assert set(tokens.read).isdisjoint(tokens.control)
    fresh, line = tokens_for(None)
    assert next(iter(fresh.read)) in line and next(iter(fresh.control)) in line  # printed once
    same = tmp_path / "same.toml"
    same.write_text('[read]\nv = "xxxxxxxxxxxxxxxxxxxx"\n[control]\nc = "xxxxxxxxxxxxxxxxxxxx"\n')
    with pytest.raises(ConfigError, match="both"):
        load_tokens(same)
    short = tmp_path / "short.toml"
    short.write_text('[read]\nv = "abc"\n[control]\nc = "xxxxxxxxxxxxxxxxxxxx"\n')
    with pytest.raises(ConfigError, match="at least 16"):
        load_tokens(short)
    write_tokens(tokens, tmp_path / "w.toml")
    assert load_tokens(tmp_path / "w.toml") == tokens
