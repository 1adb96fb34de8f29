"""Byte accounting: the coordinator's bytes_up / bytes_down equal the sizes of the serialised
messages, with and without a codec, and the compression ratio is the float32 size over them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pollen.serialization import reply_to_bytes, task_to_bytes
from pollen.server.coordinator import Coordinator, task_sizes
from pollen.compose import assemble, build_strategy, base_round_config
from pollen.transport.inprocess import InProcessTransport
from pollen.types import RoundConfig, Task, state_nbytes


class Recording(InProcessTransport):
    """In-process transport that keeps what went each way (and reports no sizes itself)."""

    def __init__(self, parties):
        super().__init__(parties)
        self.sent, self.received = [], []

    def submit(self, task):
        self.sent.append(task)
        super().submit(task)

    def poll(self, timeout=None):
        reply = super().poll(timeout)
        if reply is not None:
            self.received.append(reply)
        return reply


def run_one_round(cfg):
    fed = assemble(cfg)
    trainer = fed.trainer()
    pipeline = assemble(cfg).pipeline
    transport = Recording(fed.parties(trainer))
    coord = Coordinator(build_strategy(cfg), transport, rounds=1, pipeline=pipeline)
    state = fed.initial_state()
    outcome, _ = coord.run_round(1, state, coord.strategy.server_optimizer.init(state))
    return outcome.record, transport, state


@pytest.mark.parametrize("compression", [{}, {"codec": "int8"}, {"codec": "topk", "topk_fraction": 0.05},
                                         {"downlink": "bf16", "codec": "terngrad"}],
                         ids=["plain", "int8", "topk", "downlink-bf16"])
def test_round_bytes_equal_serialized_messages(digits_cfg, compression):
    record, transport, state = run_one_round(digits_cfg(compression=compression))
    assert len(transport.sent) == 4 and len(transport.received) == 4
    assert record["bytes_down"] == sum(len(task_to_bytes(t)) for t in transport.sent)
    assert record["bytes_up"] == sum(len(reply_to_bytes(r)) for r in transport.received)
    raw = sum(state_nbytes(r.update.delta) for r in transport.received) if not compression else None
    if raw is not None:  # plain: the ratio is the header overhead only
        assert 0.9 < record["compression_up"] < 1.0
    else:
        assert record["compression_up"] > 1.5
    expected_down = state_nbytes(state) * 4 / record["bytes_down"]
    assert record["compression_down"] == pytest.approx(expected_down)
    if "downlink" in compression:
        assert record["compression_down"] > 1.9


def test_codec_shrinks_the_uplink(digits_cfg):
    plain, _, _ = run_one_round(digits_cfg())
    int8, _, _ = run_one_round(digits_cfg(compression={"codec": "int8"}))
    assert plain["bytes_up"] / int8["bytes_up"] > 3.5
    assert plain["bytes_down"] == int8["bytes_down"]


def test_task_sizes_are_exact_for_any_party_id(digits_cfg):
    cfg = digits_cfg()
    state = assemble(cfg).initial_state()
    config = RoundConfig(extra={"x": 1})
    tasks = [Task(pid, "fit", 3, state, config) for pid in ("7", "10", "123", "party-\u00e9", "8", "99999")]
    sizes = task_sizes(tasks)
    assert sizes == {t.party_id: len(task_to_bytes(t)) for t in tasks}


def test_transport_reported_sizes_win(digits_cfg):
    """A transport that measures the wire (gRPC, process pool) sets Reply.bytes_*; those are used."""
    cfg = digits_cfg()
    fed = assemble(cfg)
    parties = fed.parties(fed.trainer())

    class Measured(InProcessTransport):
        def poll(self, timeout=None):
            reply = super().poll(timeout)
            return None if reply is None else replace(reply, bytes_up=111, bytes_down=222)

    coord = Coordinator(build_strategy(cfg), Measured(parties), rounds=1)
    state = fed.initial_state()
    outcome, _ = coord.run_round(1, state, coord.strategy.server_optimizer.init(state))
    assert outcome.record["bytes_up"] == 4 * 111 and outcome.record["bytes_down"] == 4 * 222


@pytest.mark.slow
def test_process_pool_reports_pipe_bytes(digits_cfg):
    from pollen.simulation.process_pool import ProcessPoolTransport

    cfg = digits_cfg(compression={"codec": "int8"}, simulation={"threads": 1})
    fed = assemble(cfg)
    state = fed.initial_state()
    task = Task("1", "fit", 1, state, build_strategy(cfg).configure(1, list(state)))
    with ProcessPoolTransport(fed, workers=1) as pool:
        pool.submit(task)
        reply = pool.poll(120)
    assert reply is not None and reply.ok, reply
    assert reply.bytes_down == len(task_to_bytes(task))
    assert reply.bytes_up == len(reply_to_bytes(reply))
    assert "fc1.weight::q" in reply.update.delta
