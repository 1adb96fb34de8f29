"""``pollen vertical``: the run folder, the CLI, an app of the user's, and a deployment over gRPC
with mutual TLS (coordinator and every party talking through real gRPC on 127.0.0.1)."""

from __future__ import annotations

import json
import socket
import threading

import numpy as np
import pytest

pytest.importorskip("rbcl", reason="the vertical extra (rbcl) is not installed")
pytest.importorskip("phe", reason="the vertical extra (phe) is not installed")

from pollen.cli import main  # noqa: E402
from pollen.errors import ConfigError, RunError  # noqa: E402
from pollen.vertical import simulate_vertical, vertical_config  # noqa: E402


def test_cli_simulate_writes_the_run_folder(tmp_path, capsys):
    rc = main(["vertical", "simulate", "--model", "lr", "--parties", "2", "--epochs", "2", "--key-bits", "512",
               "--name", "cli", "--runs-dir", str(tmp_path), "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "PSI: 569 common ids" in out
    run = tmp_path / "cli"
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["round"] for h in history] == [1, 2] and all("accuracy" in h and h["bytes_up"] > 0 for h in history)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["roles"] == {"0": "guest", "1": "host", "2": "arbiter"} and summary["seconds_per_epoch"] > 0
    assert (run / "report.md").exists() and (run / "config.toml").exists()
    assert main(["vertical", "simulate", "--name", "cli", "--runs-dir", str(tmp_path), "--epochs", "1"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_mistakes_are_one_line(tmp_path, capsys):
    assert main(["vertical", "simulate", "--model", "tree"]) == 2
    assert "vertical.model" in capsys.readouterr().err
    assert main(["vertical"]) == 2
    assert "needs a subcommand" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="did you mean epochs"):
        vertical_config(epoch=3)
    with pytest.raises(ConfigError, match="party id '7' is not in this run"):
        vertical_config(parties=2).role("7")


def test_a_users_app_with_its_own_ids_and_models(tmp_path):
    app = tmp_path / "bank_insurer.py"
    app.write_text('''
import numpy as np
import torch.nn as nn

def load_data(ctx):
    rng = np.random.default_rng(42)
    x = rng.normal(size=(400, 6)).astype("float32")
    y = (x[:, 0] + x[:, 3] > 0).astype("int64")
    ids = np.array([f"cust-{i:04d}" for i in range(400)])
    keep = rng.permutation(400)[: 380 if ctx.party_id == "0" else 360]   # different customers at each
    cols = [0, 1, 2] if ctx.party_id == "0" else [3, 4, 5]
    out = {"ids": ids[keep], "x": x[keep][:, cols]}
    if ctx.role == "guest":
        out["y"] = y[keep]
    return out

def bottom_model(ctx):
    return nn.Sequential(nn.Linear(ctx.num_features, 4), nn.Tanh())

def top_model(ctx):
    return nn.Linear(sum(ctx.bottom_outputs.values()), 1)
''')
    r = simulate_vertical(app=str(app), model="split", parties=2, epochs=15, lr=0.1, name="app", runs_dir=str(tmp_path),
                          progress=False)
    assert 300 < r.summary["aligned"] < 380
    assert r.history[-1]["accuracy"] > 0.9


def test_parties_that_share_no_id_stop_the_run_with_a_reason(tmp_path):
    app = tmp_path / "disjoint.py"
    app.write_text('''
import numpy as np
def load_data(ctx):
    base = 0 if ctx.party_id == "0" else 1000
    out = {"ids": [base + i for i in range(50)], "x": np.ones((50, 2), "float32")}
    if ctx.role == "guest":
        out["y"] = np.zeros(50)
    return out
''')
    with pytest.raises(RunError, match="share no id"):
        simulate_vertical(app=str(app), model="lr", key_bits=512, name="dis", runs_dir=str(tmp_path), progress=False)


def test_deployment_over_grpc_with_mutual_tls(tmp_path):
    """The coordinator and the three parties (guest, host, arbiter) over gRPC with mutual TLS;
    the result equals the simulation's."""
    from pollen.transport.rpc.party import GrpcParty, PartyOptions
    from pollen.transport.rpc.tls import make_certs
    from pollen.vertical.run import party_builder, serve_vertical

    certs = make_certs(tmp_path / "certs", ["0", "1", "2"])
    with socket.socket() as sock:  # a free port on loopback
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = vertical_config(model="lr", parties=2, epochs=2, key_bits=512, name="grpc", runs_dir=str(tmp_path),
                          progress=False, port=port, host="127.0.0.1", certs_dir=str(certs))
    result: dict[str, object] = {}

    def serve():
        try:
            result["run"] = serve_vertical(cfg)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = exc

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    parties = [GrpcParty(PartyOptions(party_id=pid, server=f"127.0.0.1:{port}", data_path=None, certs_dir=str(certs),
                                      retry_seconds=60, backoff_base=0.2), build=party_builder())
               for pid in ("0", "1", "2")]  # they retry until the coordinator listens
    threads = [threading.Thread(target=p.run, daemon=True) for p in parties]
    for t in threads:
        t.start()
    server.join(timeout=600)
    for t in threads:
        t.join(timeout=60)
    assert "error" not in result, result.get("error")
    run = result["run"]
    assert run.summary["transport"] == "grpc" and run.summary["tls"] is True and run.summary["aligned"] == 569
    sim = simulate_vertical(cfg, name="sim")
    got = [h["accuracy"] for h in run.history]
    assert got == [h["accuracy"] for h in sim.history]
    w_grpc = parties[1].party.lr.w
    np.testing.assert_allclose(w_grpc, sim.parties["1"].lr.w, atol=1e-9)  # the same training, over the wire
    assert all(h["bytes_up"] > 0 and h["bytes_down"] > 0 for h in run.history)
