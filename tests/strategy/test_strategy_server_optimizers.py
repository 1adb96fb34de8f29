"""Server optimizers against hand-computed formulas (Reddi et al. 2021; Hsu et al. 2019)."""

from __future__ import annotations

import numpy as np
import pytest

from pollen.errors import StrategyError
from pollen.strategy.base import ServerOptimizer, WeightedMean
from pollen.strategy.fedavgm import ServerMomentum
from pollen.strategy.fedopt import AdaptiveServerOptimizer
from pollen.types import Update

RNG = np.random.default_rng(0)
X = {"w": RNG.normal(size=(3, 4)).astype(np.float64), "b": RNG.normal(size=4).astype(np.float64),
     "bn.running_var": np.ones(4), "bn.num_batches_tracked": np.array(5, dtype=np.int64)}
D1 = {"w": RNG.normal(size=(3, 4)), "b": RNG.normal(size=4), "bn.running_var": np.full(4, 0.5),
      "bn.num_batches_tracked": np.array(3.0)}
D2 = {k: v * -0.7 for k, v in D1.items()}


@pytest.mark.parametrize("rule", ["adam", "yogi", "adagrad"])
def test_adaptive_two_steps_equal_the_paper_formula(rule):
    lr, b1, b2, tau = 0.03, 0.9, 0.99, 1e-3
    opt = AdaptiveServerOptimizer(rule, lr, b1, b2, tau)
    state = opt.init(X)
    x, s = X, state
    m = {k: np.zeros_like(X[k]) for k in ("w", "b")}
    v = {k: np.full_like(X[k], tau**2) for k in ("w", "b")}
    ref = {k: X[k].copy() for k in ("w", "b")}
    for d in (D1, D2):
        x, s = opt.step(x, d, s)
        for k in ("w", "b"):
            m[k] = b1 * m[k] + (1 - b1) * d[k]
            if rule == "adam":
                v[k] = b2 * v[k] + (1 - b2) * d[k] ** 2
            elif rule == "yogi":
                v[k] = v[k] - (1 - b2) * d[k] ** 2 * np.sign(v[k] - d[k] ** 2)
            else:
                v[k] = v[k] + d[k] ** 2
            ref[k] = ref[k] + lr * m[k] / (np.sqrt(v[k]) + tau)
            np.testing.assert_allclose(x[k], ref[k], rtol=1e-12)
    # running statistics take the averaged delta as is, counters stay integers
    np.testing.assert_allclose(x["bn.running_var"], 1 + 0.5 - 0.35)
    assert x["bn.num_batches_tracked"].dtype == np.int64


def test_adaptive_step_is_pure():
    opt = AdaptiveServerOptimizer("adam")
    state = opt.init(X)
    before = {k: v.copy() for k, v in state.items()}
    x_before = {k: v.copy() for k, v in X.items()}
    opt.step(X, D1, state)
    for k in state:
        np.testing.assert_array_equal(state[k], before[k])
    for k in X:
        np.testing.assert_array_equal(X[k], x_before[k])


def test_fedavgm_with_beta_zero_equals_fedavg():
    plain, mom = ServerOptimizer(1.0), ServerMomentum(1.0, beta=0.0)
    xs, ss = X, mom.init(X)
    xp = X
    for d in (D1, D2):
        xs, ss = mom.step(xs, d, ss)
        xp, _ = plain.step(xp, d, {})
    for k in X:
        np.testing.assert_allclose(xs[k], xp[k], rtol=1e-12)


def test_fedavgm_momentum_accumulates():
    lr, beta = 0.5, 0.9
    mom = ServerMomentum(lr, beta)
    x, s = mom.step(X, D1, mom.init(X))
    x, s = mom.step(x, D2, s)
    v = beta * D1["w"] + D2["w"]
    np.testing.assert_allclose(x["w"], X["w"] + lr * D1["w"] + lr * v, rtol=1e-12)


def test_fedavg_mean_equals_np_average():
    ups = [Update({"w": RNG.normal(size=5)}, n) for n in (3, 10, 7)]
    got = WeightedMean().aggregate(ups)["w"]
    np.testing.assert_allclose(got, np.average([u.delta["w"] for u in ups], axis=0, weights=[3, 10, 7]))


@pytest.mark.parametrize("kwargs", [dict(rule="nadam"), dict(rule="adam", beta1=1.0), dict(rule="yogi", tau=0.0)])
def test_adaptive_refuses_impossible_settings(kwargs):
    with pytest.raises(StrategyError):
        AdaptiveServerOptimizer(**kwargs)
