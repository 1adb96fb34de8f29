"""FedNova's normalised averaging against a float64 loop (Wang et al. 2020)."""

from __future__ import annotations

import numpy as np
import pytest

from pollen.errors import StrategyError
from pollen.strategy.base import WeightedMean
from pollen.strategy.fednova import NormalizedMean, normalizer
from pollen.types import Update

RNG = np.random.default_rng(1)


def _updates(steps, sizes):
    return [Update({"w": RNG.normal(size=(4, 3)).astype(np.float32), "bn.running_mean": RNG.normal(size=3).astype(np.float32)},
                   n, {"steps": float(t)}) for t, n in zip(steps, sizes)]


@pytest.mark.parametrize("rho", [0.0, 0.9])
def test_fednova_equals_a_float64_loop(rho):
    ups = _updates([5, 19, 40], [150, 600, 1280])
    got = NormalizedMean(momentum=rho).aggregate(ups)["w"]
    n_total = sum(u.num_examples for u in ups)
    tau_eff, acc = 0.0, np.zeros((4, 3))
    for u in ups:
        p = u.num_examples / n_total
        t = u.metrics["steps"]
        a = t if rho == 0 else sum(sum(rho**j for j in range(k + 1)) for k in range(int(t)))  # ‖a_i‖₁ by its definition
        tau_eff += p * a
        acc += p * u.delta["w"].astype(np.float64) / a
    np.testing.assert_allclose(got, tau_eff * acc, rtol=1e-5)


def test_normalizer_closed_form_matches_sum():
    rho, t = 0.9, 13
    assert normalizer(t, rho) == pytest.approx(sum(sum(rho**j for j in range(k + 1)) for k in range(t)))


def test_equal_steps_reduce_to_fedavg():
    ups = _updates([10, 10, 10], [100, 300, 50])
    nova, avg = NormalizedMean().aggregate(ups), WeightedMean().aggregate(ups)
    for k in avg:
        np.testing.assert_allclose(nova[k], avg[k], rtol=1e-5)


def test_missing_step_count_is_refused():
    with pytest.raises(StrategyError, match="steps"):
        NormalizedMean().aggregate([Update({"w": np.ones(2)}, 3, {})])
