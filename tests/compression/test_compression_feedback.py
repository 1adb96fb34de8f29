"""Error feedback keeps what the codec dropped on the party and sends it in later rounds."""

from __future__ import annotations

import numpy as np

from pollen.compression import TopK, int8
from pollen.compose import assemble, build_strategy, base_round_config
from pollen.transforms.base import StepContext
from pollen.types import Task, Update


def test_residual_is_carried_to_the_next_round():
    rng = np.random.default_rng(0)
    codec = TopK(0.1, error_feedback=True)
    party_state: dict = {}
    inputs = [rng.standard_normal(200).astype(np.float32) for _ in range(5)]
    sent = []
    for r, x in enumerate(inputs, start=1):
        enc = codec.encode(Update({"w": x}, 1), StepContext("0", r, rng, party_state))
        sent.append(codec.decode(enc).delta["w"])
        residual = party_state[codec.state_key]["w"]
        if r == 1:
            np.testing.assert_allclose(residual, x - sent[0])  # what was not sent
    # telescoping: everything that went in was either sent or is still held
    np.testing.assert_allclose(sum(sent) + residual, sum(inputs), rtol=1e-5, atol=1e-5)
    # the second message is top-k of (x2 + residual1), not of x2
    fresh = codec.decode(TopK(0.1).encode(Update({"w": inputs[1]}, 1), StepContext("0", 2, rng))).delta["w"]
    assert not np.array_equal(fresh, sent[1])


def test_without_feedback_nothing_is_kept():
    party_state: dict = {}
    TopK(0.1).encode(Update({"w": np.ones(50, np.float32)}, 1), StepContext("0", 1, np.random.default_rng(0), party_state))
    assert party_state == {}


def test_feedback_works_for_quantizers_too():
    rng = np.random.default_rng(1)
    codec = int8(error_feedback=True)
    state: dict = {}
    x = (rng.standard_normal(100) * 1e-3).astype(np.float32)
    x[0] = 1.0  # one large value makes the small ones round to zero
    total = np.zeros(100)
    for r in range(1, 41):
        total += codec.decode(codec.encode(Update({"w": x}, 1), StepContext("0", r, rng, state))).delta["w"]
    # over 40 rounds the small entries get through on average
    np.testing.assert_allclose(total / 40, x, atol=1.0 / 127 / 40 + 1e-6)


def test_party_runtime_keeps_the_residual_between_rounds(digits_cfg):
    """LocalParty (the runtime used inline, in the process pool and behind gRPC) holds the residual."""
    cfg = digits_cfg(compression={"codec": "topk", "topk_fraction": 0.05, "error_feedback": True})
    fed = assemble(cfg)
    pipeline = assemble(cfg).pipeline
    party = fed.parties(fed.trainer(), ["0"])["0"]
    state = fed.initial_state()
    key = pipeline.steps[-1].state_key
    r1 = party.handle(Task("0", "fit", 1, state, build_strategy(cfg).configure(1, list(state))))
    assert r1.ok and key in party.state
    first = {k: v.copy() for k, v in party.state[key].items()}
    r2 = party.handle(Task("0", "fit", 2, state, build_strategy(cfg).configure(2, list(state))))
    assert r2.ok
    second = party.state[key]
    assert set(first) == set(second) and any(not np.array_equal(first[k], second[k]) for k in first)
    assert any(np.abs(v).max() > 0 for v in second.values())
