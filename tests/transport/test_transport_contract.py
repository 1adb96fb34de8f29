"""The Transport contract, run against every implementation that needs no network."""

import numpy as np
import pytest

from pollen.config import make_config
from pollen.compose import assemble, build_strategy, base_round_config
from pollen.simulation.process_pool import ProcessPoolTransport
from pollen.transport.inprocess import InProcessTransport
from pollen.types import RoundConfig, Task


@pytest.fixture(scope="module")
def cfg():
    return make_config({"data": {"dataset": "digits", "parties": 3, "holdout": 0.2}})


def _inprocess(cfg):
    fed = assemble(cfg)
    return InProcessTransport(fed.parties(fed.trainer()))


def _pool(cfg):
    fed = assemble(cfg)
    return ProcessPoolTransport(fed, workers=2)


@pytest.mark.parametrize("make", [_inprocess, _pool], ids=["inprocess", "process_pool"])
def test_transport_contract(cfg, make):
    fed = assemble(cfg)
    state = fed.initial_state()
    with make(cfg) as t:
        assert sorted(t.available()) == ["0", "1", "2"]
        assert t.pending() == 0 and t.poll(0.01) is None
        for pid in ("0", "1", "2"):
            t.submit(Task(pid, "fit", 1, state, RoundConfig(round=1)))
        t.submit(Task("0", "evaluate", 1, state, RoundConfig(round=1)))
        assert t.pending() == 4
        replies = [t.poll(30) for _ in range(4)]
        assert t.pending() == 0
        fits = [r for r in replies if r.kind == "fit"]
        assert sorted(r.party_id for r in fits) == ["0", "1", "2"] and all(r.ok for r in replies)
        assert all(set(r.update.delta) == set(state) and r.update.num_examples > 0 for r in fits)
        ev = next(r for r in replies if r.kind == "evaluate")
        assert 0 <= ev.evaluation.accuracy <= 1 and ev.evaluation.num_examples > 0
        t.submit(Task("1", "bogus", 1, state, RoundConfig()))
        bad = t.poll(30)
        assert not bad.ok and "bogus" in bad.failure
        t.submit(Task("2", "fit", 2, state, RoundConfig(round=2)))
        t.submit(Task("2", "fit", 2, state, RoundConfig(round=2)))
        t.forget(2)
        while t.pending():
            r = t.poll(30)
            assert r is None or r.round == 2
        np.testing.assert_equal(len(state), len(fits[0].update.delta))
