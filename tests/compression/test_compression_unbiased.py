"""Stochastic quantisers are unbiased: the mean of many decoded draws converges to the input;
deterministic ones are not (a check that the test can fail)."""

from __future__ import annotations

import numpy as np
import pytest

from pollen.compression import int8, qsgd, terngrad
from pollen.transforms.base import StepContext
from pollen.types import Update

DRAWS = 2000


def draws(codec, x: np.ndarray, n: int = DRAWS) -> np.ndarray:
    """``n`` independent decode(encode(x)) results, shape (n, x.size)."""
    rng = np.random.default_rng(123)
    u = Update({"w": x}, 1)
    out = np.empty((n, x.size))
    for i in range(n):
        ctx = StepContext("0", i, rng)
        out[i] = codec.decode(codec.encode(u, ctx)).delta["w"]
    return out


X = (np.random.default_rng(7).standard_normal(64) * np.linspace(0.01, 1, 64)).astype(np.float32)


@pytest.mark.parametrize("codec", [qsgd(2, 16), qsgd(4, 64), terngrad(), terngrad(block=8)],
                         ids=["qsgd2", "qsgd4", "terngrad", "terngrad-block"])
def test_stochastic_quantizers_are_unbiased(codec):
    assert codec.unbiased
    d = draws(codec, X)
    # every draw of a coordinate lies in one quantisation step, so by Hoeffding its mean is within
    # 5·step/(2√N) of the expectation except with probability 2·e^-12.5 (per coordinate)
    step = codec.max_error(X)
    assert np.all(np.abs(d.mean(axis=0) - X) <= 5 * step / (2 * np.sqrt(DRAWS)) + 1e-6)
    assert d.std(axis=0).max() > 0  # really random
    # the same test catches a biased quantiser: nearest rounding with the same levels
    biased = type(codec)(codec.levels, codec.norm, False, codec.block)
    assert np.any(np.abs(draws(biased, X, 20).mean(axis=0) - X) > 5 * step / (2 * np.sqrt(DRAWS)) + 1e-6)


def test_qsgd_variance_within_the_papers_bound():
    codec = qsgd(3, 0)  # one bucket: s = 3 levels
    d = draws(codec, X, 500)
    n, s = X.size, 3
    mse = ((d - X) ** 2).sum(axis=1).mean()
    assert mse <= min(n / s**2, np.sqrt(n) / s) * float((X.astype(np.float64) ** 2).sum())


def test_terngrad_with_clipping_is_biased():
    x = np.zeros(200, dtype=np.float32)
    x[0] = 10.0  # an outlier far beyond 2.5 σ
    codec = terngrad(clip_sigmas=2.5)
    assert not codec.unbiased
    assert abs(draws(codec, x, 200).mean(axis=0)[0] - 10.0) > 1.0


def test_deterministic_rounding_is_biased_and_says_so():
    codec = int8()
    x = np.array([1.0, 0.3 / 127], dtype=np.float32)  # 0.3 of a step rounds to 0 every time
    d = draws(codec, x, 50)
    assert not codec.unbiased
    assert d[:, 1].mean() == 0.0 and x[1] != 0
