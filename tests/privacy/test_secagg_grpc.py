"""SecAgg+ over the real gRPC transport (127.0.0.1, parties as threads of this process): the
protocol uses nothing but submit/poll, Task/Reply arrays and JSON metadata, so the stages, the
dropout recovery and the result are the same as in simulation — whatever the order and timing of
the replies (issue 12: the parity test once ended 0.26 away from plain FedAvg inside the suite)."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from pollen.client.party import LocalParty
from pollen.transport.base import Transport

from pollen.config import make_config
from pollen.data import load_dataset, partition, write_shards
from pollen.simulation.run import simulate
from pollen.telemetry.history import party_metric

IDS = ["0", "1", "2", "3"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    ds = load_dataset("digits")
    return ds, write_shards(ds, partition(ds, "iid", len(IDS), 0), tmp_path_factory.mktemp("data"), scheme="iid", seed=0)


def _cfg(tmp_path, **privacy):
    return make_config({"data": {"dataset": "digits", "parties": len(IDS), "holdout": 0.0}, "model": {"model": "mlp"},
                        "train": {"lr": 0.1}, "federation": {"rounds": 2}, "privacy": privacy,
                        "run": {"seed": 0, "progress": False, "runs_dir": str(tmp_path), "name": "plain"}})


def test_secagg_over_grpc_matches_plain_fedavg(shards, tmp_path, run_over_grpc):
    plain = simulate(_cfg(tmp_path))
    state, records = run_over_grpc(_cfg(tmp_path, secagg=True), *shards, IDS)
    assert [r["secagg_parties"] for r in records] == [4.0, 4.0]
    diff = max(float(np.max(np.abs(state[k] - plain.state[k]))) for k in plain.state)
    # quantisation steps are ~1e-6; the rest is the same training. The message tells a wrong sum
    # (same train losses) from different training (different losses) if this ever fails again.
    seen = {"plain": [(r["round"], party_metric(r, "train_loss"), r.get("num_examples")) for r in plain.history],
            "grpc": [(r["round"], party_metric(r, "train_loss"), r.get("num_examples"), r.get("parties")) for r in records]}
    assert diff < 1e-4, seen
    assert records[-1]["bytes_up"] > 4 * sum(v.nbytes for v in state.values())  # masked vectors counted


def test_secagg_over_grpc_recovers_from_a_dropout_after_masking(shards, tmp_path, run_over_grpc):
    _, records = run_over_grpc(_cfg(tmp_path, secagg=True, secagg_dropout=0.25), *shards, IDS)
    assert all(r["secagg_dropped"] == 1 and r["secagg_parties"] == 3 and r["aggregated"] for r in records)
    assert party_metric(records[-1], "train_loss") < party_metric(records[0], "train_loss")


class Reordering(Transport):
    """Holds back every reply of a stage until all its replies are in, then hands them to the
    coordinator in a shuffled (or reversed) order."""

    def __init__(self, inner: Transport, seed: int | None) -> None:
        self.inner, self.rng, self.seed = inner, random.Random(seed), seed
        self.held: list = []
        self.orders: list[list[str]] = []

    def available(self):
        return self.inner.available()

    def submit(self, task):
        self.inner.submit(task)

    def poll(self, timeout=None):
        if not self.held:
            first = self.inner.poll(timeout)
            if first is None:
                return None
            self.held.append(first)
            while self.inner.pending() > 0:  # every reply of the stage (a lost party fails its task)
                reply = self.inner.poll(timeout)
                if reply is None:
                    break
                self.held.append(reply)
            if self.seed is None:
                self.held.reverse()
            else:
                self.rng.shuffle(self.held)
            self.orders.append([r.party_id for r in self.held])
        return self.held.pop(0)

    def pending(self):
        return self.inner.pending() + len(self.held)

    def forget(self, round):
        self.inner.forget(round)

    def close(self):
        self.inner.close()


@pytest.mark.parametrize("seed", [None, 1, 2], ids=["reversed", "shuffled-1", "shuffled-2"])
def test_the_secure_sum_over_grpc_does_not_depend_on_the_order_or_timing_of_replies(shards, tmp_path, run_over_grpc,
                                                                                      monkeypatch, seed):
    """Replies reach the hub in a different order each stage (the parties take turns in a seeded
    order: each waits until the parties before it have answered, so the order is an event chain, not
    a timing) and the coordinator in a shuffled or reversed order: the secure sum still equals plain
    FedAvg."""
    plain = simulate(_cfg(tmp_path))
    real = LocalParty.handle
    turns = threading.Condition()
    answered: dict[tuple, int] = {}

    def late(self, task):
        stage = (task.round, task.kind)
        order = sorted(IDS, key=lambda p: random.Random(f"{seed}/{p}/{task.round}/{task.kind}").random())
        with turns:  # every party is asked at every stage of this run (no dropout configured)
            assert turns.wait_for(lambda: answered.get(stage, 0) >= order.index(self.party_id), timeout=120), stage
        try:
            return real(self, task)
        finally:
            with turns:
                answered[stage] = answered.get(stage, 0) + 1
                turns.notify_all()

    monkeypatch.setattr(LocalParty, "handle", late)
    made = []
    state, records = run_over_grpc(_cfg(tmp_path, secagg=True), *shards, IDS,
                                   wrap=lambda hub: made.append(Reordering(hub, seed)) or made[-1])
    orders = made[0].orders
    assert len(orders) == 2 * 5 and all(sorted(o) == IDS for o in orders)  # 2 rounds × 5 stages, all replies
    assert any(o != sorted(o, key=int) for o in orders)  # and not in id order
    assert [r["secagg_parties"] for r in records] == [4.0, 4.0]
    diff = max(float(np.max(np.abs(state[k] - plain.state[k]))) for k in plain.state)
    assert diff < 1e-4, [(r["round"], r.get("train_loss")) for r in records]
