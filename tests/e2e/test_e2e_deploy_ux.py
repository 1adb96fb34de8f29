"""A new user's first deployment, with real ``pollen`` processes on 127.0.0.1: addresses refused
with the fix, an unreachable coordinator reported with each retry, TLS mismatches explained on
both sides, parties that cannot train reported by the coordinator, and a party saying what it
trains with."""

import signal
import subprocess
import sys

from e2e_helpers import free_port, history, setup_root, wait_until

SERVER = ["server", "--dataset", "digits", "--epochs", "1", "--seed", "0", "--host", "127.0.0.1", "--runs-dir", "runs"]


def pollen(root, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pollen.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=root)


def start_server(procs, *args: str):
    server = procs.start("server", *SERVER, *args)
    wait_until(lambda: "waiting for" in procs.log("server") or server.poll() is not None, 90, "the coordinator to listen")
    assert server.poll() is None, procs.log("server")
    return server


def test_an_address_without_a_port_is_refused_at_once_with_the_fix(tmp_path):
    out = pollen(tmp_path, "client", "--party-id", "0", "--server", "localhost", "--insecure")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == ["pollen client: error: --server 'localhost': give the coordinator as HOST:PORT, "
                                       "e.g. localhost:9394 or 192.168.1.100:9394 (the port the server printed when "
                                       "it started)"]
    out = pollen(tmp_path, "server", "--host", "0.0.0.0:9394", "--dataset", "digits")
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.splitlines() == ["pollen server: error: --host '0.0.0.0:9394': give the address alone and the "
                                       "port with --port (e.g. --host 0.0.0.0 --port 9394)"]
    assert list(tmp_path.iterdir()) == []  # nothing was started or written


def test_an_unreachable_coordinator_is_reported_with_each_retry_then_given_up(procs, prepared):
    setup_root(procs, prepared)
    port = free_port()  # nothing listens here
    out = pollen(procs.root, "client", "--party-id", "0", "--server", f"localhost:{port}", "--certs-dir", "certs",
                 "--data", "data/party0", "--retry-seconds", "2", "--backoff-cap", "0.5")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.splitlines()
    assert lines[0] == f"party 0: the coordinator's app, data data/party0; connecting to the coordinator at localhost:{port}"
    retries = lines[1:-1]
    assert len(retries) >= 2, lines
    for n, line in enumerate(retries, 1):
        assert line.startswith(f"cannot reach the coordinator at localhost:{port}: connection refused: nothing "
                               "listens there (is the coordinator started, and is this the port it printed?); "
                               f"retry {n} in "), line
        assert "s (giving up in " in line
    assert lines[-1].startswith(f"pollen client: error: gave up after 2 s without reaching the coordinator at "
                                f"localhost:{port} (--retry-seconds): connection refused")


def test_a_tls_party_at_an_insecure_coordinator_is_explained_on_both_sides(procs, prepared):
    setup_root(procs, prepared)
    port = free_port()
    server = start_server(procs, "--num-parties", "1", "--port", str(port), "--name", "plain", "--insecure", "--no-progress")
    party = procs.start("party0", "client", "--party-id", "0", "--server", f"localhost:{port}", "--certs-dir", "certs",
                        "--data", "data/party0", "--retry-seconds", "2", "--backoff-cap", "0.5")
    assert party.wait(timeout=120) == 2, procs.log("party0")
    said = procs.log("party0")
    attempts = said.count("cannot reach the coordinator")
    assert attempts >= 2 and said.count("the coordinator runs without TLS (--insecure) and this party with TLS: start "
                                        "both the same way") == attempts + 1  # each retry and the final error
    assert "TLS handshake failed: WRONG_VERSION_NUMBER" in said
    assert "Handshake failed with error" not in said  # gRPC's raw line: explained instead
    explained = ("a client connected with TLS, but this coordinator runs with --insecure: start the party with "
                 "--insecure too (local experiments only), or restart the coordinator without --insecure and with "
                 "--certs-dir (gRPC: first byte 0x16, not an HTTP/2 preface)")
    wait_until(lambda: explained in procs.log("server"), 60, "the coordinator's explanation")
    server.send_signal(signal.SIGINT)
    assert server.wait(timeout=60) == 130
    log = procs.log("server")
    assert log.count(explained) == 1  # the party's attempts came within 10 s: one line, the others counted
    assert "more refused connections (" in log and "TLS to this --insecure port) since the last explanation" in log
    assert "chttp2_transport.cc" not in log and "Connect string mismatch" not in log  # the http tracer's lines: dropped
    assert "every finished round is saved" in log  # stderr was put back and still works


def test_an_insecure_party_at_a_tls_coordinator_is_explained_on_both_sides(procs, prepared):
    setup_root(procs, prepared)
    port = free_port()
    server = start_server(procs, "--num-parties", "1", "--port", str(port), "--name", "tls", "--certs-dir", "certs",
                          "--no-progress")
    party = procs.start("party0", "client", "--party-id", "0", "--server", f"localhost:{port}", "--insecure",
                        "--data", "data/party0", "--retry-seconds", "2", "--backoff-cap", "0.5")
    assert party.wait(timeout=120) == 2, procs.log("party0")
    said = procs.log("party0")
    assert ("the coordinator closed the connection at once: it requires TLS and this party runs with --insecure; "
            "drop --insecure and pass --certs-dir with ca.pem and party-0.pem/.key [Socket closed]") in said
    explained = ("a client connected without TLS (a party started with --insecure?) and was refused: start it "
                 "without --insecure and with --certs-dir holding ca.pem and its party-<id>.pem/.key from this "
                 "federation's CA (gRPC: WRONG_VERSION_NUMBER)")
    wait_until(lambda: explained in procs.log("server"), 60, "the coordinator's explanation")
    server.send_signal(signal.SIGINT)
    assert server.wait(timeout=60) == 130
    log = procs.log("server")
    assert log.count(explained) == 1 and "Handshake failed with error" not in log


APP = '''import torch

from pollen.data import read_shard


def model():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear({features}, 10))


def load_data(ctx):
    x, y, _ = read_shard(ctx.data_path)  # a shard 'pollen partition' wrote
    return torch.from_numpy(x), torch.from_numpy(y)
'''


def test_parties_that_cannot_train_are_reported_by_the_coordinator_and_the_run_fails(procs, prepared):
    setup_root(procs, prepared)
    procs.run("partition", "--out", "wine", "--dataset", "wine", "--parties", "1", "--seed", "0")
    (procs.root / "app.py").write_text(APP.format(features=64))  # the digits' 64 features
    (procs.root / "other.py").write_text(APP.format(features=13))
    port = free_port()
    server = procs.start("server", "server", "--app", "app.py", "--num-parties", "2", "--rounds", "2", "--epochs", "1",
                         "--seed", "0", "--host", "127.0.0.1", "--port", str(port), "--runs-dir", "runs", "--name", "broken",
                         "--certs-dir", "certs", "--no-progress")
    common = ["--server", f"localhost:{port}", "--certs-dir", "certs", "--threads", "1"]
    wrong_data = procs.start("party0", "client", "--party-id", "0", *common, "--data", "wine/party0")  # 13 features
    wrong_app = procs.start("party1", "client", "--party-id", "1", *common, "--data", "data/party1", "--app", "other.py")
    assert server.wait(timeout=150) == 2, procs.log("server")
    log = procs.log("server")
    data_error = "RuntimeError: mat1 and mat2 shapes cannot be multiplied"
    model_error = ("party cannot train: ModelError: this party's app builds a different model than the coordinator's: "
                   "run the same app on both sides and check that this party's data has the coordinator's features (")
    for rnd in (1, 2):
        assert f"party 0 failed in round {rnd}: {data_error}" in log
        assert f"party 1 failed in round {rnd}: {model_error}" in log
    errors = [line for line in log.splitlines() if line.startswith("pollen server: error:")]
    assert len(errors) == 1 and errors[0].startswith("pollen server: error: no round aggregated an update")
    assert f"round 2: party 0: {data_error}" in errors[0] and f"party 1: {model_error}" in errors[0]
    run_dir = procs.root / "runs" / "broken"
    records = history(run_dir)
    assert [r["round"] for r in records] == [1, 2] and not any(r["aggregated"] for r in records)
    for r in records:
        assert r["failures"]["0"].startswith(data_error) and r["failures"]["1"].startswith(model_error)
    assert (run_dir / "report.md").exists()
    assert wrong_data.wait(timeout=60) == 0  # it could train in principle: each round failed, and it said so
    assert f"round 1 (fit) failed here (the coordinator is told): {data_error}" in procs.log("party0")
    assert wrong_app.wait(timeout=60) == 2
    said = procs.log("party1")
    assert f"party 1 joined the federation at localhost:{port} but cannot train: ModelError" in said
    assert "pollen client: error: party 1 failed at setup: ModelError" in said


def test_a_party_says_what_it_trains_with_and_when_it_joined(procs, prepared):
    setup_root(procs, prepared)
    port = free_port()
    server = start_server(procs, "--num-parties", "1", "--rounds", "1", "--port", str(port), "--name", "one",
                          "--certs-dir", "certs")  # with the progress display: plain lines into the log
    party = procs.start("party0", "client", "--party-id", "0", "--server", f"localhost:{port}", "--certs-dir", "certs",
                        "--data", "data/party0", "--threads", "1")
    assert server.wait(timeout=150) == 0, procs.log("server")
    assert party.wait(timeout=60) == 0, procs.log("party0")
    said = procs.log("party0").splitlines()
    assert said[0] == f"party 0: the coordinator's app, data data/party0; connecting to the coordinator at localhost:{port}"
    assert said[1].startswith(f"party 0 joined the federation at localhost:{port}; training with the built-in app on "
                              "dataset digits on data/party0 (") and said[1].endswith(" examples)")
    assert said[-1].startswith("party 0: run finished after")
    log = procs.log("server")
    assert "round 1/1" in log and "run written to" in log
