"""pollen.arrays: the multi-core passes give numpy's results bit for bit, and decide finiteness
exactly (including sums that overflow while every element is finite)."""

import numpy as np
import pytest
import torch

from pollen import arrays

SIZES = (10, 200_003)  # below the torch threshold (numpy route) and above it, with a ragged tail
WEIGHTS = (600.0, 1.0, 1 / 3, 0.1234567891234, 1e-7, 12345.678)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", SIZES)
def test_add_scaled_is_numpys_multiply_then_add(dtype, size):
    rng = np.random.default_rng(0)
    for w in WEIGHTS:
        value = (rng.standard_normal(size) * rng.choice([1e-3, 1.0, 1e3])).astype(dtype)
        total = rng.standard_normal(size).astype(dtype)
        want = total + value * w
        arrays.add_scaled(total, value, w, np.empty_like(value))
        np.testing.assert_array_equal(total, want)


def test_add_scaled_mixed_dtypes_take_numpy():
    total = np.zeros(100_000, np.float64)
    value = np.full(100_000, 0.1, np.float32)
    arrays.add_scaled(total, value, 3.0, np.empty_like(value))
    np.testing.assert_array_equal(total, np.zeros(100_000) + value * 3.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", SIZES)
def test_subtract_is_numpys(dtype, size):
    rng = np.random.default_rng(1)
    local = torch.from_numpy(rng.standard_normal(size).astype(dtype))
    ref = rng.standard_normal(size).astype(dtype)
    out = arrays.subtract(local, ref)
    np.testing.assert_array_equal(out, local.numpy() - ref)
    assert not np.shares_memory(out, ref) and not np.shares_memory(out, local.numpy())


def test_subtract_read_only_reference():
    ref = np.arange(100_000, dtype=np.float32)
    ref.flags.writeable = False
    local = torch.ones(100_000)
    np.testing.assert_array_equal(arrays.subtract(local, ref), 1 - ref)


@pytest.mark.parametrize("size", SIZES)
def test_all_finite(size):
    x = np.random.default_rng(2).standard_normal(size).astype(np.float32)
    assert arrays.all_finite(x)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[size // 2] = bad
        assert not arrays.all_finite(y)
    y = x.copy()
    y[0], y[-1] = np.inf, -np.inf  # the sum is NaN, not an infinity
    assert not arrays.all_finite(y)
    # every element finite, but their float32 sum overflows: the exact check decides
    assert arrays.all_finite(np.full(size, 3e38, np.float32))
