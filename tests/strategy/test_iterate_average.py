"""The moving average of the global iterates (``--ema``): the formula by hand, what parties get,
what a run writes, and a resumed run."""

from __future__ import annotations

import numpy as np
import pytest

from pollen.config import make_config
from pollen.errors import ConfigError, StrategyError
from pollen.simulation import simulate
from pollen.compose import build_strategy
from pollen.strategy.averaging import IterateAverage
from pollen.strategy.base import ServerOptimizer
from pollen.strategy.fedavgm import ServerMomentum

RNG = np.random.default_rng(0)
X = {"w": RNG.normal(size=(3, 4)).astype(np.float32), "b": RNG.normal(size=4).astype(np.float32),
     "bn.num_batches_tracked": np.array(5, dtype=np.int64)}
DELTAS = [{"w": RNG.normal(size=(3, 4)).astype(np.float32), "b": RNG.normal(size=4).astype(np.float32),
           "bn.num_batches_tracked": np.array(3.0)} for _ in range(4)]


@pytest.mark.parametrize("make", [lambda: ServerOptimizer(0.5), lambda: ServerMomentum(1.0, 0.9)], ids=["sgd", "momentum"])
def test_average_follows_the_formula_and_parties_get_the_iterate(make):
    beta = 0.3
    opt = IterateAverage(make(), beta)
    ref_opt = make()
    ref_x, ref_s = dict(X), ref_opt.init(X)
    m = {k: v.astype(np.float64) for k, v in X.items()}
    state, s = dict(X), opt.init(X)
    for t, d in enumerate(DELTAS):
        sent = opt.broadcast(state, s)
        for k in ("w", "b"):  # parties train from the iterate, not from the average
            np.testing.assert_array_equal(sent[k], ref_x[k])
        state, s = opt.step(state, d, s)
        ref_x, ref_s = ref_opt.step(ref_x, d, ref_s)
        b = min(beta, (1 + t) / (10 + t))
        for k in ("w", "b"):
            m[k] = b * m[k] + (1 - b) * ref_x[k]
            np.testing.assert_allclose(state[k], m[k], rtol=1e-5, atol=1e-6, err_msg=k)
            assert state[k].dtype == np.float32
        assert state["bn.num_batches_tracked"] == ref_x["bn.num_batches_tracked"]  # counters: the iterate's
    assert b == beta  # the warm-up (b_3 = 4/13) reached β = 0.3
    assert not np.allclose(state["w"], ref_x["w"])  # the average is not the iterate


def test_decay_warms_up_to_beta():
    opt = IterateAverage(ServerOptimizer(), 0.9)
    b = [opt.decay(t) for t in range(200)]
    assert b[0] == pytest.approx(0.1) and all(x <= y for x, y in zip(b, b[1:])) and b[-1] == 0.9


@pytest.mark.parametrize("beta", [0.0 - 1e-9, 1.0])
def test_bad_beta_is_refused(beta):
    with pytest.raises(StrategyError, match="--ema"):
        IterateAverage(ServerOptimizer(), beta)


def test_asynchronous_strategies_refuse_it():
    cfg = make_config({"data": {"dataset": "digits", "parties": 4}, "strategy": {"name": "fedbuff", "ema": 0.9}})
    with pytest.raises(ConfigError, match="synchronous"):
        build_strategy(cfg)


def test_run_writes_the_average_and_resumes_exactly(tmp_path):
    from safetensors.numpy import load_file

    def cfg(rounds, run, ema=0.7):
        return make_config({"data": {"dataset": "digits", "parties": 4, "holdout": 0.0}, "model": {"model": "mlp"},
                            "federation": {"rounds": rounds, "eval_every": 1}, "train": {"lr": 0.1},
                            "strategy": {"name": "fedavgm", "server_momentum": 0.5, "ema": ema},
                            "simulation": {"threads": 1},
                            "run": {"name": run, "runs_dir": str(tmp_path), "progress": False, "seed": 0}})

    plain = simulate(cfg(4, "plain", ema=0.0))
    straight = simulate(cfg(4, "a"))
    assert any(not np.allclose(straight.state[k], plain.state[k]) for k in plain.state)  # it changed the model
    opt = load_file(str(tmp_path / "a" / "checkpoints" / "round-000004" / "optimizer.safetensors"))
    assert int(opt["ema/t"][0]) == 4 and any(k.startswith("x/") for k in opt)
    # the iterate the average was made from is plain FedAvgM's model (the average never feeds back)
    for k in plain.state:
        np.testing.assert_allclose(opt["x/" + k], plain.state[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # the history carries both: the average's accuracy and the iterate's (= the plain run's, round by round)
    assert [h["iterate_accuracy"] for h in straight.history] == pytest.approx([h["accuracy"] for h in plain.history])
    assert all("iterate_accuracy" not in h for h in plain.history)
    simulate(cfg(2, "b"))
    resumed = simulate(cfg(4, "b"), resume=tmp_path / "b").state
    for k in straight.state:
        np.testing.assert_allclose(resumed[k], straight.state[k], rtol=1e-5, atol=1e-6, err_msg=k)
