"""Streaming aggregation: the running sum equals the in-memory mean (np.average), whole or piece
by piece; the party-order fold equals the in-memory aggregate bit for bit whatever the arrival
order; a round loop that streams trains the same model; rules that need every update refuse it;
federated evaluation asks a bounded sample of parties."""

from __future__ import annotations

import numpy as np
import pytest

from pollen.errors import ConfigError, StrategyError
from pollen.server.streaming import OrderedFold, StreamingMean, can_stream, streaming_wanted
from pollen.strategy.base import WeightedMean
from pollen.transforms.base import empty_pipeline
from pollen.types import Update


def _updates(n: int, seed: int = 0) -> list[Update]:
    rng = np.random.default_rng(seed)
    return [Update({"w": rng.normal(size=(4, 3)).astype(np.float32), "b": rng.normal(size=3).astype(np.float32),
                    "count": np.array(rng.integers(0, 9), dtype=np.int64)}, int(rng.integers(1, 50)))
            for _ in range(n)]


@pytest.mark.parametrize("weighted", [True, False])
def test_streaming_mean_equals_in_memory_mean(weighted):
    ups = _updates(7)
    like = ups[0].delta
    stream = StreamingMean(like, weighted)
    kept = [stream.add(u) for u in ups]
    assert all(k.delta == {} and k.num_examples == u.num_examples for k, u in zip(kept, ups))  # nothing held
    got = stream.finish()
    want = WeightedMean(weighted).aggregate(ups)
    w = [u.num_examples if weighted else 1 for u in ups]
    for name in like:
        ref = np.average(np.stack([u.delta[name].astype(np.float64) for u in ups]), axis=0, weights=w)
        assert got[name].dtype == like[name].dtype
        if name == "count":
            assert got[name] == np.rint(ref)
        else:
            np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(got[name], want[name])  # same order: the very same float32 sums


def test_pieces_fold_like_whole_updates():
    ups = _updates(5, seed=1)
    whole, pieces = StreamingMean(ups[0].delta), StreamingMean(ups[0].delta)
    for u in ups:
        whole.add(u)
        w = pieces.weight_of(u.num_examples)
        for name, v in u.delta.items():
            flat = v.reshape(-1)
            for start in range(0, flat.size, 5):  # tiny chunks straddling rows
                pieces.add_piece(name, start, flat[start : start + 5], w, v.shape)
        pieces.commit(w, sum(a.nbytes for a in u.delta.values()))
    a, b = whole.finish(), pieces.finish()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert whole.raw_bytes == pieces.raw_bytes


def test_a_misshapen_update_is_refused_before_anything_is_folded():
    ups = _updates(2)
    stream = StreamingMean(ups[0].delta)
    stream.add(ups[0])
    bad = ups[1].with_(delta={**ups[1].delta, "b": np.zeros(4, np.float32)})
    with pytest.raises(StrategyError, match="'b'"):
        stream.add(bad)
    np.testing.assert_allclose(stream.finish()["w"], ups[0].delta["w"], rtol=1e-6)  # the sum is untouched


@pytest.mark.parametrize("weighted", [True, False])
def test_the_party_order_fold_is_the_in_memory_aggregate_whatever_the_arrival_order(weighted):
    ups = _updates(6, seed=2)
    ids = ["1", "2", "5", "10", "11", "30"]  # id order, as the round loop sorts them
    good = [0, 1, 3, 5]  # "5" fails, "11" never replies
    want = WeightedMean(weighted).aggregate([ups[i] for i in good])
    for arrival in ([0, 1, 2, 3, 5], [5, 3, 2, 1, 0], [3, 0, 5, 2, 1]):
        fold = OrderedFold(WeightedMean(weighted), ids)
        for i in arrival:
            if i == 2:
                fold.skip(ids[i])
            else:
                kept = fold.add(ups[i], ids[i])
                assert kept.delta == {} and kept.num_examples == ups[i].num_examples
        got = fold.finish()
        assert fold.count == len(good)
        for name, v in want.items():
            assert got[name].dtype == v.dtype
            np.testing.assert_array_equal(got[name], v)  # the same additions in the same order


def test_the_party_order_fold_holds_only_what_arrives_before_its_turn():
    ups = _updates(4, seed=3)
    fold = OrderedFold(WeightedMean(), ["0", "1", "2", "3"])
    for i in range(4):  # in order: nothing waits
        fold.add(ups[i], str(i))
        assert fold.waiting == 0 and fold.count == i + 1
    fold = OrderedFold(WeightedMean(), ["0", "1", "2", "3"])
    fold.add(ups[2], "2"), fold.add(ups[3], "3")
    assert fold.waiting == 2 and fold.count == 0  # "0" and "1" not in yet
    fold.skip("0")
    assert fold.waiting == 2
    fold.add(ups[1], "1")
    assert fold.waiting == 0 and fold.count == 3


def test_the_default_round_loop_folds_in_party_order_and_trains_the_same_model_bit_for_bit(digits_cfg):
    from pollen.simulation import simulate

    runs = {mode: simulate(digits_cfg(federation={"rounds": 3, "stream_aggregate": mode}, run={"name": mode}))
            for mode in ("off", "auto")}
    for name, v in runs["off"].state.items():
        np.testing.assert_array_equal(runs["auto"].state[name], v)
    assert [r["parties"] for r in runs["auto"].history] == [r["parties"] for r in runs["off"].history]
    assert runs["auto"].history[-1]["compression_up"] == runs["off"].history[-1]["compression_up"]


def test_nothing_folded_cannot_be_averaged():
    with pytest.raises(StrategyError):
        StreamingMean({"w": np.zeros(2, np.float32)}).finish()


def test_which_rules_stream():
    assert can_stream(WeightedMean(), empty_pipeline()) is None
    median = type("Median", (), {"name": "median", "linear": False})()
    assert "needs every update" in can_stream(median, empty_pipeline())
    with pytest.raises(ConfigError, match="--stream-aggregate on"):
        streaming_wanted("on", {"w": np.zeros(2, np.float32)}, can_stream(median, empty_pipeline()))
    small = {"w": np.zeros(10, np.float32)}
    assert not streaming_wanted("auto", small, None) and streaming_wanted("on", small, None)
    assert not streaming_wanted("off", small, None)


def test_a_streamed_run_trains_the_same_model(digits_cfg):
    from pollen.simulation import simulate

    runs = {}
    for mode in ("off", "on"):
        cfg = digits_cfg(federation={"rounds": 3, "stream_aggregate": mode}, run={"name": mode})
        runs[mode] = simulate(cfg)
    for name, v in runs["off"].state.items():
        np.testing.assert_allclose(runs["on"].state[name], v, rtol=1e-4, atol=1e-5)  # arrival vs party order
    assert [r["parties"] for r in runs["on"].history] == [r["parties"] for r in runs["off"].history]
    assert runs["on"].history[-1]["compression_up"] == pytest.approx(runs["off"].history[-1]["compression_up"])


def test_streaming_with_median_is_refused_at_the_first_round(digits_cfg):
    from pollen.simulation import simulate

    with pytest.raises(ConfigError, match="needs every update at once"):
        simulate(digits_cfg(federation={"stream_aggregate": "on"}, strategy={"name": "median"}))


def test_federated_evaluation_asks_a_bounded_sample_and_builds_only_those_parties(digits_cfg, tmp_path):
    from pollen.compose import assemble
    from pollen.transport.inprocess import InProcessTransport

    cfg = digits_cfg(data={"dataset": "digits", "parties": 150},
                     federation={"rounds": 2, "parties_per_round": 3, "fed_eval_parties": 7, "fed_eval_every": 1})
    fed = assemble(cfg)
    pool = fed.party_pool(fed.trainer(), state_dir=tmp_path / "state")
    coordinator = fed.coordinator(InProcessTransport(pool))
    asked: list[str] = []
    real = pool.handle

    def spy(task):
        if task.kind == "evaluate":
            asked.append(task.party_id)
        return real(task)

    pool.handle = spy
    coordinator.run(fed.initial_state())
    assert len(asked) == 2 * 7  # 7 parties per evaluation, not 150
    assert pool.built <= 2 * 3 + 2 * 7  # only parties that were asked something were ever built
