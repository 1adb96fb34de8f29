import numpy as np
import pytest

from pollen.server import Checkpointer, Coordinator, collect
from pollen.strategy import ClientConfig, Sampler, fedavg
from pollen.telemetry import EventBus, PartyReplied, RoundCompleted
from pollen.transport.base import Transport
from pollen.types import EvalResult, Reply, Update


class ScriptedTransport(Transport):
    """Parties answer with fixed deltas; some fail, some never answer."""

    def __init__(self, deltas, fail=(), silent=(), examples=None):
        self.deltas, self.fail, self.silent = deltas, set(fail), set(silent)
        self.examples = examples or {p: 1 for p in deltas}
        self.queue, self.seen = [], []

    def available(self):
        return list(self.deltas)

    def submit(self, task):
        self.seen.append(task)
        if task.party_id not in self.silent:
            self.queue.append(task)

    def poll(self, timeout=None):
        if not self.queue:
            return None
        t = self.queue.pop(0)
        if t.party_id in self.fail:
            return Reply(t.party_id, t.kind, t.round, failure="RuntimeError: boom")
        if t.kind == "evaluate":
            return Reply(t.party_id, "evaluate", t.round, evaluation=EvalResult(1.0, 0.5, 10))
        return Reply(t.party_id, "fit", t.round, update=Update({"w": self.deltas[t.party_id]}, self.examples[t.party_id]))

    def pending(self):
        return len(self.queue)


def _strategy(**kw):
    return fedavg(Sampler(**kw), ClientConfig())


def test_round_is_the_example_weighted_mean():
    deltas = {"0": np.array([1.0, 0.0]), "1": np.array([0.0, 2.0]), "2": np.array([3.0, 3.0])}
    ex = {"0": 1, "1": 3, "2": 6}
    coord = Coordinator(_strategy(), ScriptedTransport(deltas, examples=ex), rounds=1)
    out = coord.run({"w": np.zeros(2)})
    expected = np.average(np.stack(list(deltas.values())), axis=0, weights=list(ex.values()))
    np.testing.assert_allclose(out["w"], expected)


def test_failures_and_silence_cost_the_round_only_their_replies():
    deltas = {str(i): np.full(2, float(i)) for i in range(4)}
    bus, records, failures = EventBus(), [], []
    bus.subscribe(lambda e: records.append(e.record) if isinstance(e, RoundCompleted) else None)
    bus.subscribe(lambda e: failures.append(e.party_id) if isinstance(e, PartyReplied) and e.failure else None)
    coord = Coordinator(_strategy(), ScriptedTransport(deltas, fail={"1"}, silent={"3"}), rounds=2,
                        round_timeout=0.05, events=bus)
    out = coord.run({"w": np.zeros(2)})
    np.testing.assert_allclose(out["w"], 2 * np.full(2, 1.0))  # mean of parties 0 and 2, twice
    assert records[0]["parties_failed"] == ["1", "3"] and records[0]["parties"] == ["0", "2"]
    assert failures == ["1", "1"]


def test_too_few_replies_keep_the_model():
    deltas = {"0": np.ones(2), "1": np.ones(2)}
    records = []
    bus = EventBus()
    bus.subscribe(lambda e: records.append(e.record) if isinstance(e, RoundCompleted) else None)
    coord = Coordinator(_strategy(), ScriptedTransport(deltas, fail={"1"}), rounds=1, min_fit_parties=2, events=bus)
    out = coord.run({"w": np.zeros(2)})
    np.testing.assert_array_equal(out["w"], np.zeros(2))
    assert records[0]["aggregated"] is False and "min_fit_parties" in records[0]["reason"]


def test_sampler_follows_the_benchmark_recipe():
    s = Sampler(count=10, seed=0)
    ids = [str(i) for i in range(100)]
    for r in (1, 2, 7):
        expected = [str(i) for i in np.random.default_rng([0, r]).choice(100, 10, replace=False)]
        assert s.select(r, ids) == expected
    assert Sampler(fraction=0.5).sample_size(7) == 4 and Sampler(fraction=0.01).sample_size(7) == 1


def test_collect_ignores_late_and_duplicate_replies():
    class Noisy(ScriptedTransport):
        def poll(self, timeout=None):
            r = super().poll(timeout)
            if r is not None and r.party_id == "0" and not getattr(self, "sent", False):
                self.sent = True
                self.queue.insert(0, self.seen[0])  # duplicate
                return Reply("0", "fit", r.round - 1, update=r.update)  # stale round first
            return r

    t = Noisy({"0": np.ones(1), "1": np.ones(1)})
    from pollen.types import RoundConfig, Task

    replies, late = collect(t, [Task(p, "fit", 5, {}, RoundConfig()) for p in ("0", "1")], None)
    assert sorted(r.party_id for r in replies) == ["0", "1"] and late == [] and all(r.round == 5 for r in replies)


def test_checkpoint_round_trip(tmp_path):
    ck = Checkpointer(tmp_path)
    with pytest.raises(Exception, match="nothing to resume"):
        ck.load()
    state = {"b": np.arange(3, dtype=np.float32), "a": np.array(4, dtype=np.int64)}
    ck.save(3, state, {"m": np.ones(2)}, {"round": 3})
    rnd, s, opt, meta = ck.load()
    assert rnd == 3 and list(s) == ["b", "a"] and s["a"].shape == () and meta["record"]["round"] == 3
