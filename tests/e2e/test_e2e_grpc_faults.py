"""Faults with real processes: a party killed mid-run costs its reply and comes back; a coordinator
killed with SIGKILL resumes from its checkpoint and ends with the uninterrupted run's model."""

import signal

import pytest

from e2e_helpers import PARTIES, RUN, RUN_FLAGS, assert_same_model, free_port, history, setup_root, wait_until


@pytest.mark.slow
def test_killed_party_costs_its_reply_and_rejoins(procs, prepared):
    setup_root(procs, prepared)
    port = free_port()
    rounds = 8
    server = procs.start("server", "server", *RUN_FLAGS, "--rounds", str(rounds), "--port", str(port),
                         "--heartbeat-interval", "2", "--round-timeout", "60", "--runs-dir", "runs", "--name", "faults",
                         "--certs-dir", "certs")
    parties = [procs.party(i, port) for i in range(PARTIES)]
    run_dir = procs.root / "runs" / "faults"
    wait_until(lambda: len(history(run_dir)) >= 2, 120, "two rounds")
    parties[2].send_signal(signal.SIGKILL)
    killed_after = len(history(run_dir))
    procs.party(2, port)  # restarted: reconnects and takes part again (each round waits for --min-parties)
    assert server.wait(timeout=150) == 0, procs.log("server")
    records = history(run_dir)
    assert [r["round"] for r in records] == list(range(1, rounds + 1))
    assert all(r["aggregated"] for r in records), "a lost party must not cost the round"
    lost = [r["round"] for r in records if "2" in r["parties_failed"]]
    assert [r for r in lost if r >= killed_after], records
    assert "2" in records[-1]["parties"], "the restarted party did not take part again"


@pytest.mark.slow
def test_coordinator_killed_and_resumed_equals_uninterrupted(procs, prepared, tmp_path):
    # Long enough that a kill after the first round lands mid-run even on a fast, idle machine.
    rounds = 12
    from pollen.config import make_config
    from pollen.simulation import simulate

    run = {**RUN, "federation": {**RUN["federation"], "rounds": rounds},
           "run": {**RUN["run"], "runs_dir": str(tmp_path / "sim"), "name": "sim"}}
    simulated = simulate(make_config(run)).state
    setup_root(procs, prepared)
    port = free_port()
    args = ["--port", str(port), "--certs-dir", "certs"]
    server = procs.start("server", "server", *RUN_FLAGS, "--rounds", str(rounds), *args, "--runs-dir", "runs",
                         "--name", "resume")
    for i in range(PARTIES):
        procs.party(i, port)
    run_dir = procs.root / "runs" / "resume"
    wait_until(lambda: len(history(run_dir)) >= 1, 120, "one round", every=0.02)
    server.send_signal(signal.SIGKILL)
    server.wait(timeout=10)
    done = len(history(run_dir))
    assert done < rounds, "the run finished before the kill; nothing was resumed"
    resumed = procs.start("server2", "server", "--resume", str(run_dir), *args)
    assert resumed.wait(timeout=150) == 0, procs.log("server2")
    records = history(run_dir)
    assert [r["round"] for r in records] == list(range(1, rounds + 1))
    assert_same_model(run_dir, simulated)
