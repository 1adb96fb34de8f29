"""A coordinator and three party processes over gRPC with mutual TLS finish the run the inline
simulation finishes, with the same final model; status and metrics answer while it waits."""

import urllib.request

from e2e_helpers import PARTIES, ROUNDS, RUN_FLAGS, assert_same_model, free_port, history, setup_root, wait_until


def test_grpc_run_equals_simulation(procs, prepared, simulated):
    setup_root(procs, prepared)
    port, metrics = free_port(), free_port()
    server = procs.start("server", "server", *RUN_FLAGS, "--port", str(port), "--metrics-port", str(metrics),
                         "--runs-dir", "runs", "--name", "grpc", "--certs-dir", "certs")
    wait_until(lambda: "waiting for" in procs.log("server") or server.poll() is not None, 90, "the coordinator to listen")
    assert server.poll() is None, procs.log("server")
    status = procs.run("status", "--server", f"localhost:{port}", "--certs-dir", "certs")
    assert "parties connected: 0" in status
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode()
    assert "pollen_parties_connected 0.0" in body
    parties = [procs.party(i, port) for i in range(PARTIES)]
    assert server.wait(timeout=150) == 0, procs.log("server")
    for p in parties:
        assert p.wait(timeout=30) == 0
    run_dir = procs.root / "runs" / "grpc"
    records = history(run_dir)
    assert [r["round"] for r in records] == list(range(1, ROUNDS + 1))
    assert all(sorted(r["parties"]) == ["0", "1", "2"] for r in records)
    assert_same_model(run_dir, simulated)
