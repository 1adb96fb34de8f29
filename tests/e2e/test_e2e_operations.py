"""Operations with real processes (issue 12, item 7): SIGTERM stops the coordinator after its
checkpoint and tells the parties, which wait for it; resumed, the run ends with the uninterrupted
run's model. A damaged newest checkpoint is skipped on resume with a warning."""

import signal

import pytest

from e2e_helpers import PARTIES, RUN, RUN_FLAGS, assert_same_model, free_port, history, setup_root, wait_until


@pytest.mark.slow
def test_sigterm_stops_the_coordinator_tells_the_parties_and_the_run_resumes(procs, prepared, tmp_path):
    rounds = 10
    from pollen.config import make_config
    from pollen.simulation import simulate

    run = {**RUN, "federation": {**RUN["federation"], "rounds": rounds},
           "run": {**RUN["run"], "runs_dir": str(tmp_path / "sim"), "name": "sim"}}
    simulated = simulate(make_config(run)).state
    setup_root(procs, prepared)
    port = free_port()
    args = ["--port", str(port), "--certs-dir", "certs"]
    server = procs.start("server", "server", *RUN_FLAGS, "--rounds", str(rounds), *args, "--runs-dir", "runs",
                         "--name", "term")
    parties = [procs.party(i, port) for i in range(PARTIES)]
    run_dir = procs.root / "runs" / "term"
    wait_until(lambda: len(history(run_dir)) >= 1, 120, "one round", every=0.02)
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 128 + signal.SIGTERM, procs.log("server")
    log = procs.log("server")
    assert "stopped by SIGTERM" in log and f"--resume {run_dir.relative_to(procs.root)}" in log, log
    assert "Traceback" not in log
    done = len(history(run_dir))
    assert done < rounds, "the run finished before the signal; nothing was stopped"
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints[-1] == f"round-{done:06d}" and len(checkpoints) <= 2
    # the parties were told, and wait for the coordinator instead of leaving
    wait_until(lambda: all("can be resumed" in procs.log(f"party{i}") for i in range(PARTIES)), 60, "the parties told")
    assert all(p.poll() is None for p in parties), "a party left instead of waiting for the coordinator"
    resumed = procs.start("server2", "server", "--resume", str(run_dir), *args)
    assert resumed.wait(timeout=200) == 0, procs.log("server2")
    assert [r["round"] for r in history(run_dir)] == list(range(1, rounds + 1))
    assert_same_model(run_dir, simulated)
    for p in parties:
        assert p.wait(timeout=60) == 0
