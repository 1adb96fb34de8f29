"""Asynchronous federation: staleness weights (Xie et al. 2019), FedBuff's buffered aggregation
(Nguyen et al. 2022) in the Coordinator, and the simulated clock (party speeds, dropouts)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pollen.errors import ConfigError, StrategyError
from pollen.server import Coordinator
from pollen.simulation.clock import SimulatedClock, party_slowness
from pollen.strategy import ClientConfig, Sampler, fedavg
from pollen.strategy.fedasync import Staleness
from pollen.strategy.fedbuff import AsyncSpec, StalenessMean, fedbuff
from pollen.telemetry import EventBus, RoundCompleted
from pollen.transport.base import Transport
from pollen.types import Reply, Update


def test_staleness_functions_match_the_paper():
    tau = np.arange(0, 10)
    np.testing.assert_allclose(Staleness("constant").weight(tau), np.ones(10))
    np.testing.assert_allclose(Staleness("polynomial", a=0.5).weight(tau), (1 + tau) ** -0.5)
    hinge = Staleness("hinge", a=2.0, b=3.0).weight(tau)
    np.testing.assert_allclose(hinge, [1, 1, 1, 1] + [1 / (2 * (t - 3) + 1) for t in range(4, 10)])
    assert Staleness().weight(3) == pytest.approx(0.5)
    with pytest.raises(StrategyError):
        Staleness("exponential")
    with pytest.raises(StrategyError):
        Staleness().weight(-1)


def test_staleness_mean_is_the_fedbuff_formula():
    rng = np.random.default_rng(0)
    taus = [0, 1, 3, 8]
    ups = [Update({"w": rng.normal(size=4), "bn.running_var": np.full(4, 0.1 * i)}, 10 + i, {"staleness": t})
           for i, t in enumerate(taus)]
    got = StalenessMean(Staleness("polynomial", 0.5)).aggregate(ups)
    ref = sum((1 + t) ** -0.5 * u.delta["w"] for t, u in zip(taus, ups)) / len(ups)
    np.testing.assert_allclose(got["w"], ref)
    # running statistics: the plain mean of the fresh (τ = 0) arrivals only
    np.testing.assert_allclose(got["bn.running_var"], np.zeros(4))


def test_async_spec_refuses_a_buffer_that_cannot_fill():
    with pytest.raises(StrategyError, match="never fill"):
        AsyncSpec(buffer_size=5, concurrency=3)


class OneSecond(Transport):
    """Every fit task takes 1 s of compute; its delta is the model version it started from."""

    def __init__(self, ids=("a", "b", "s")):
        self.ids, self.queue = list(ids), []

    def available(self):
        return list(self.ids)

    def submit(self, task):
        self.queue.append(task)

    def poll(self, timeout=None):
        if not self.queue:
            return None
        t = self.queue.pop(0)
        delta = {"w": np.full(2, float(t.round))}
        return Reply(t.party_id, t.kind, t.round, update=Update(delta, 1, {"steps": 1.0}), seconds=1.0)

    def pending(self):
        return len(self.queue)


def _run(strategy, rounds, slowness, dropout=0.0):
    records = []
    bus = EventBus()
    bus.subscribe(lambda e: records.append(e.record) if isinstance(e, RoundCompleted) else None)
    clock = SimulatedClock(OneSecond(), slowness, dropout=dropout, seed=0)
    state = Coordinator(strategy, clock, rounds, events=bus).run({"w": np.zeros(2)})
    return state, records


SPEEDS = {"a": 1.0, "b": 1.0, "s": 5.0}


def test_fedbuff_steps_every_k_arrivals_with_staleness_weights():
    spec = AsyncSpec(buffer_size=2, max_staleness=10, staleness=Staleness("polynomial", 0.5))
    state, recs = _run(fedbuff(Sampler(), ClientConfig(), spec), 5, SPEEDS)
    # fast parties answer every virtual second; after round 1 they started from the previous version
    assert [r["virtual_seconds"] for r in recs] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert [r["staleness_max"] for r in recs[:4]] == [0, 1, 1, 1]
    # the slow party started at version 1 and arrives at t = 5, in round 5: staleness 4
    assert "s" in recs[4]["parties"] and recs[4]["staleness_max"] == 4
    # x = Σ_rounds Σ_i s(τᵢ) Δᵢ / K, with Δᵢ = the version party i started from
    r1 = (1 + 1) / 2
    r2 = 2 * (2 ** -0.5 * 1) / 2
    r3 = 2 * (2 ** -0.5 * 2) / 2
    r4 = 2 * (2 ** -0.5 * 3) / 2
    r5 = (5 ** -0.5 * 1 + 2 ** -0.5 * 4) / 2  # the slow party's stale update and one fresh-ish one
    np.testing.assert_allclose(state["w"], np.full(2, r1 + r2 + r3 + r4 + r5))


def test_updates_staler_than_the_bound_are_discarded():
    spec = AsyncSpec(buffer_size=2, max_staleness=2)
    _, recs = _run(fedbuff(Sampler(), ClientConfig(), spec), 5, SPEEDS)
    assert recs[4]["parties_stale"] == ["s"]
    assert "s" not in recs[4]["parties"] and recs[4]["staleness_max"] <= 2


def test_fedasync_mixes_each_arrival():
    spec = AsyncSpec(buffer_size=1, max_staleness=10, staleness=Staleness("constant"))
    state, recs = _run(fedbuff(Sampler(), ClientConfig(), spec, server_lr=0.5, name="fedasync"), 3, SPEEDS)
    assert all(len(r["parties"]) == 1 for r in recs)
    # arrivals: a (v1), b (v1), a (v1, re-sent in round 1) → x = 0.5·(1 + 1 + 1)
    np.testing.assert_allclose(state["w"], np.full(2, 1.5))


def test_sync_round_waits_for_the_slowest_party():
    _, recs = _run(fedavg(Sampler(), ClientConfig()), 2, SPEEDS)
    assert [r["virtual_seconds"] for r in recs] == [5.0, 10.0]


def test_dropouts_are_failures_and_the_buffer_still_fills():
    spec = AsyncSpec(buffer_size=2, max_staleness=50)
    _, recs = _run(fedbuff(Sampler(), ClientConfig(), spec), 12, SPEEDS, dropout=0.3)
    assert all(r["aggregated"] and len(r["parties"]) == 2 for r in recs)
    assert sum(len(r["parties_failed"]) for r in recs) > 0


def test_party_slowness_specs():
    ids = [str(i) for i in range(4000)]
    s = party_slowness("lognormal:1.0", ids, np.random.default_rng(0))
    logs = np.log(list(s.values()))
    assert abs(logs.mean()) < 0.05 and abs(logs.std() - 1.0) < 0.05
    assert set(party_slowness("constant", ids[:3], np.random.default_rng(0)).values()) == {1.0}
    u = np.array(list(party_slowness("uniform:2:3", ids, np.random.default_rng(0)).values()))
    assert u.min() >= 2 and u.max() <= 3
    for bad in ("lognormal", "gamma:1", "uniform:3:2", "lognormal:x"):
        with pytest.raises(ConfigError):
            party_slowness(bad, ids, np.random.default_rng(0))


def test_clock_returns_replies_in_virtual_time_order():
    clock = SimulatedClock(OneSecond(), {"a": 3.0, "b": 1.0, "s": 2.0})
    from pollen.types import RoundConfig, Task

    for pid in ("a", "b", "s"):
        clock.submit(Task(pid, "fit", 1, {}, RoundConfig()))
    order = [(clock.poll().party_id, clock.clock()) for _ in range(3)]
    assert order == [("b", 1.0), ("s", 2.0), ("a", 3.0)]
    assert clock.pending() == 0 and math.isclose(clock.clock(), 3.0)
