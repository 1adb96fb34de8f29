"""DP-SGD budgets through deployment faults (issue 12), over real gRPC on 127.0.0.1 with each party
a thread of this process and its privacy ledger on disk: a party killed and restarted past its
budget keeps refusing; a coordinator killed in the middle of a round and resumed reports the ε of
an uninterrupted run (the re-issued round is answered from the parties' ledgers, not retrained)."""

from __future__ import annotations

import math
import threading

import pytest

from pollen.client.ledger import Ledger
from pollen.compose import assemble, open_run
from pollen.config import make_config
from pollen.data import load_dataset, partition, write_shards
from pollen.privacy.accountant import epsilon_for
from pollen.simulation import simulate
from pollen.telemetry import RoundCompleted
from pollen.transport.base import Transport
from pollen.transport.rpc.hub import GrpcTransport
from pollen.transport.rpc.party import GrpcParty, PartyOptions
from pollen.transport.rpc.service import FederationService, start_server
from pollen.transport.rpc.tls import RevocationList

IDS = ["0", "1", "2", "3"]
# The Poisson rate and local epochs pinned, so that --dp-sgd's recipe (pollen/privacy/recipe.py: 5 epochs at
# rate 0.5) does not choose them: the budget test sizes its budget from one epoch at this rate per round.
EPOCHS, RATE = 1, 1 / 16
PRIVACY = {"dp_sgd": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5, "dp_sample_rate": RATE}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    ds = load_dataset("digits")
    return write_shards(ds, partition(ds, "iid", len(IDS), 0), tmp_path_factory.mktemp("data"), scheme="iid", seed=0)


def _cfg(tmp_path, name, rounds, **privacy):
    return make_config({"data": {"dataset": "digits", "parties": len(IDS), "holdout": 0.0}, "model": {"model": "mlp"},
                        "train": {"lr": 0.1, "epochs": EPOCHS}, "federation": {"rounds": rounds}, "privacy": {**PRIVACY, **privacy},
                        "run": {"seed": 0, "progress": False, "runs_dir": str(tmp_path), "name": name}})


class Federation:
    """Parties (threads) that outlive coordinators: each coordinator is a gRPC server on one port."""

    def __init__(self, folder, tmp_path, port: int = 0) -> None:
        self.folder, self.ledgers, self.runs, self.port = folder, tmp_path / "ledgers", tmp_path / "runs", port
        self.parties: dict[str, GrpcParty] = {}
        self.threads: dict[str, threading.Thread] = {}
        self.errors: list[Exception] = []

    def serve(self, cfg):
        hub = GrpcTransport(60.0)
        server, self.port = start_server(FederationService(hub, cfg.to_dict(), 10**9, True, RevocationList(None)),
                                         "127.0.0.1", self.port, None)
        return hub, server

    def start_party(self, pid: str) -> None:
        party = GrpcParty(PartyOptions(pid, f"127.0.0.1:{self.port}", str(self.folder / f"party{pid}"), insecure=True,
                                       backoff_base=0.05, backoff_cap=0.5, threads=1, retry_seconds=60.0,
                                       ledger=str(self.ledgers / f"party{pid}")))

        def run():
            try:
                party.run()
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(exc)

        self.parties[pid] = party
        self.threads[pid] = threading.Thread(target=run, daemon=True)
        self.threads[pid].start()

    def stop_party(self, pid: str) -> None:
        """Kill a party: it stops and leaves; only its ledger on disk remains."""
        self.parties[pid].stop()
        self.threads[pid].join(timeout=120)
        assert not self.threads[pid].is_alive()
        self.parties[pid].leave()

    def run(self, cfg, hub, resume: bool = False, wrap=None, callbacks=()):
        asm = assemble(cfg)
        folder = open_run(asm, run_dir=self.runs / cfg.run.name, resume=resume, callbacks=callbacks)
        records = []
        folder.events.subscribe(lambda e: records.append(e.record) if isinstance(e, RoundCompleted) else None)
        point = folder.resume
        coord = asm.coordinator(hub if wrap is None else wrap(hub), folder.events, folder.checkpointer)
        state = coord.run(point.state if point else asm.initial_state(), start_round=point.start if point else 1,
                          optimizer_state=point.optimizer_state if point else None)
        return state, records, folder.path

    def close(self) -> None:
        for t in self.threads.values():
            t.join(timeout=120)
        assert not any(t.is_alive() for t in self.threads.values()), "a party thread did not stop after the run"
        assert not self.errors, self.errors


def _charges(ledgers, pid):
    return [e["round"] for e in Ledger(ledgers / f"party{pid}", pid).entries if "epsilon" in e]


def test_a_party_killed_and_restarted_past_its_budget_keeps_refusing(shards, tmp_path):
    fed = Federation(shards, tmp_path)
    steps = math.ceil(EPOCHS / RATE)  # one round's steps at a fixed Poisson rate (pollen/privacy/dpsgd.py)
    eps = [epsilon_for(1.0, RATE, steps * r, 1e-5) for r in (1, 2, 3)]
    target = (eps[1] + eps[2]) / 2  # two rounds fit the budget, a third does not
    cfg = _cfg(tmp_path, "budget", 4, target_epsilon=target)
    hub, server = fed.serve(cfg)
    for pid in IDS:
        fed.start_party(pid)
    assert hub.wait_for_parties(len(IDS), timeout=60)

    def restart_party_0(event):  # the coordinator's thread: round 3 starts once party 0 is back
        if isinstance(event, RoundCompleted) and event.round == 2:
            fed.stop_party("0")
            fed.start_party("0")  # a new process: only its ledger folder is the same
            assert hub.wait_for_parties(len(IDS), timeout=60)

    try:
        _, records, _ = fed.run(cfg, hub, callbacks=[restart_party_0])
    finally:
        hub.close()
        fed.close()
        server.stop(0)
    by_round = {r["round"]: r for r in records}
    for rnd in (3, 4):
        assert "0" in by_round[rnd]["parties_failed"]
        assert "budget" in by_round[rnd]["failures"]["0"], by_round[rnd]["failures"]
    assert _charges(tmp_path / "ledgers", "0") == [1, 2]
    ledger = Ledger(tmp_path / "ledgers" / "party0", "0")
    assert ledger.spent() <= target and [e["round"] for e in ledger.entries if "refused" in e] == [3, 4]
    assert max(r.get("epsilon") or 0 for r in records) <= target


class CrashMidRound(Transport):
    """The coordinator dies (no checkpoint, no goodbye) after ``after`` fit replies of ``round``."""

    def __init__(self, inner, round: int, after: int) -> None:
        self.inner, self.round, self.after, self.seen = inner, round, after, 0

    def available(self):
        return self.inner.available()

    def submit(self, task):
        self.inner.submit(task)

    def poll(self, timeout=None):
        reply = self.inner.poll(timeout)
        if reply is not None and reply.kind == "fit" and reply.round == self.round:
            self.seen += 1
            if self.seen == self.after:
                raise SystemExit("coordinator killed")  # as SIGKILL: nothing after this point runs
        return reply

    def pending(self):
        return self.inner.pending()

    def forget(self, round):
        self.inner.forget(round)


def test_a_coordinator_killed_mid_round_resumes_with_the_epsilon_of_an_uninterrupted_run(shards, tmp_path):
    full = simulate(_cfg(tmp_path, "full", 3))
    cfg = _cfg(tmp_path, "crash", 3)
    fed = Federation(shards, tmp_path)
    hub, server = fed.serve(cfg)
    for pid in IDS:
        fed.start_party(pid)
    assert hub.wait_for_parties(len(IDS), timeout=60)
    with pytest.raises(SystemExit):
        fed.run(cfg, hub, wrap=lambda h: CrashMidRound(h, round=2, after=3))
    server.stop(0).wait()  # the process is gone; the parties keep retrying its address
    hub2, server2 = fed.serve(cfg)  # `pollen server --resume`, same port
    try:
        assert hub2.wait_for_parties(len(IDS), timeout=120)
        _, records, run_dir = fed.run(cfg, hub2, resume=True)
    finally:
        hub2.close()
        fed.close()
        server2.stop(0)
        hub.close()
    assert [r["round"] for r in records] == [2, 3]
    assert records[-1]["epsilon"] == pytest.approx(full.history[-1]["epsilon"])
    for pid in IDS:
        assert _charges(tmp_path / "ledgers", pid) == [1, 2, 3]  # round 2 charged once, whoever had answered it
    assert records[0]["party_metrics"]["ledger_cached"] > 0  # some parties answered round 2 from their ledgers
