"""The ``sizes`` partitioner: exact or proportional party sizes, seeded and disjoint."""

from fractions import Fraction

import numpy as np
import pytest

from pollen.data import Dataset, parse_sizes, partition, sizes
from pollen.errors import DataError


def largest_remainder(n, weights):
    """Reference: exact rational quotas, floors, then +1 to the largest remainders in turn."""
    quotas = [Fraction(n) * Fraction(w) / sum(Fraction(v) for v in weights) for w in weights]
    out = [int(q) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda j: (-(quotas[j] - out[j]), j))
    for j in by_remainder[:n - sum(out)]:
        out[j] += 1
    return out


def toy(n):
    x = np.zeros((n, 2), np.float32)
    y = (np.arange(n) % 3).astype(np.int64)
    return Dataset("toy", x, y, x[:5], y[:5], 3, (2,))


def test_parse_sizes_both_forms():
    assert parse_sizes("500,300,200") == ([500, 300, 200], False)
    assert parse_sizes(" 500 , 300 ") == ([500, 300], False)
    assert parse_sizes("5:3:2") == ([5.0, 3.0, 2.0], True)
    assert parse_sizes("0.5:0.25:0.25") == ([0.5, 0.25, 0.25], True)
    assert parse_sizes("1000") == ([1000], False)


@pytest.mark.parametrize("text", ["", "500,,200", "5:3,2", "a,b", "500,-1", "5:0:2", "2.5,3"])
def test_parse_sizes_refuses_bad_text_with_both_examples(text):
    with pytest.raises(DataError, match="'500,300,200' or .*'5:3:2'"):
        parse_sizes(text)


def test_exact_sizes_are_consecutive_pieces_of_the_seeded_permutation():
    parts = sizes(1000, [500, 300, 150], seed=3)
    assert [len(p) for p in parts] == [500, 300, 150] and all(p.dtype == np.int64 for p in parts)
    perm = np.random.default_rng(3).permutation(1000)
    assert np.array_equal(parts[0], perm[:500]) and np.array_equal(parts[1], perm[500:800])
    assert np.array_equal(parts[2], perm[800:950])
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == 950  # disjoint; the other 50 examples are unused


def test_proportional_uses_every_example_with_largest_remainder_sizes():
    parts = sizes(569, [500, 300, 200], seed=0, proportional=True)
    expected = largest_remainder(569, [500, 300, 200])
    assert expected == [284, 171, 114]  # quotas 284.5, 170.7, 113.8: two extra go to .8 and .7
    assert [len(p) for p in parts] == expected
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(569))
    for n, weights in ((10, [1, 1, 1]), (7, [0.5, 0.25, 0.25]), (1001, [3, 3, 2, 1, 7])):
        got = [len(p) for p in sizes(n, weights, seed=1, proportional=True)]
        assert got == largest_remainder(n, weights) and sum(got) == n


def test_proportional_gives_every_party_at_least_one():
    assert [len(p) for p in sizes(10, [1000, 1], seed=0, proportional=True)] == [9, 1]
    with pytest.raises(DataError, match="4 parties need at least 4 examples.*has 3"):
        sizes(3, [1, 1, 1, 1], seed=0, proportional=True)


def test_seeded():
    first = sizes(300, [100, 50, 150], seed=5)
    again = sizes(300, [100, 50, 150], seed=5)
    other = sizes(300, [100, 50, 150], seed=6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_exact_sum_past_n_is_refused_with_the_proportional_form():
    with pytest.raises(DataError, match="sum to 1000 but the training set has only 569 "
                                        "examples.*'500:300:200'.*all 569 examples"):
        sizes(569, [500, 300, 200], seed=0)
    with pytest.raises(DataError, match="each exact size must be >= 1, got 0"):
        sizes(100, [50, 0], seed=0)
    with pytest.raises(DataError, match="each exact size must be an integer"):
        sizes(100, [50, 2.5], seed=0)


def test_partition_dispatches_sizes():
    data = toy(1000)
    parts = partition(data, "sizes", 3, seed=2, sizes="500,300,200")
    assert all(np.array_equal(a, b) for a, b in zip(parts, sizes(1000, [500, 300, 200], 2)))
    parts = partition(data, "sizes", 3, seed=2, sizes="5:3:1")
    assert [len(p) for p in parts] == largest_remainder(1000, [5, 3, 1])
    assert [len(p) for p in partition(data, "sizes", 2, seed=0, sizes=[10, 20])] == [10, 20]


def test_partition_sizes_refusals():
    with pytest.raises(DataError, match="gives 3 parties but parties is 4"):
        partition(toy(1000), "sizes", 4, seed=0, sizes="500,300,200")
    with pytest.raises(DataError, match="the sizes scheme needs sizes="):
        partition(toy(1000), "sizes", 3, seed=0)
    with pytest.raises(DataError, match="sum to 1000 but the training set has only 569"):
        partition(toy(569), "sizes", 3, seed=0, sizes="500,300,200")
