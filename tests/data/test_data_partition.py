"""Partitioners: disjoint, complete, seeded, and faithful to the BENCHMARKS.md recipes."""

import numpy as np
import pytest

from pollen.data import (
    PARTITION_SCHEMES,
    Dataset,
    dirichlet,
    format_histogram,
    iid,
    label_histogram,
    load_dataset,
    natural,
    partition,
    quantity_skew,
    shards,
    sizes,
    split_holdout,
)
from pollen.errors import DataError

LABELS = np.repeat(np.arange(10), 100)[np.random.default_rng(7).permutation(1000)]  # 100 per class


def make_dataset(groups=None):
    x = np.zeros((len(LABELS), 2), np.float32)
    y = LABELS.astype(np.int64)
    return Dataset("toy", x, y, x[:5], y[:5], 10, (2,), groups)


def assert_disjoint_cover(parts, n, parties):
    assert len(parts) == parties and all(p.dtype == np.int64 for p in parts)
    joined = np.concatenate(parts)
    assert len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))


SPLITTERS = {
    "iid": lambda seed: iid(1000, 7, seed),
    "dirichlet": lambda seed: dirichlet(LABELS, 7, 0.5, seed),
    "shards": lambda seed: shards(LABELS, 7, 2, seed),
    "quantity": lambda seed: quantity_skew(1000, 7, 0.5, seed),
    "natural": lambda seed: natural(np.arange(1000) % 23, 7, seed),
    "sizes": lambda seed: sizes(1000, SIZES, seed),
}
SIZES = [100, 150, 200, 50, 300, 100, 100]


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_disjoint_complete_reproducible(scheme):
    first, again, other = SPLITTERS[scheme](0), SPLITTERS[scheme](0), SPLITTERS[scheme](1)
    assert_disjoint_cover(first, 1000, 7)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_dispatcher(scheme):
    data = make_dataset(groups=np.arange(1000) % 23)
    parts = partition(data, scheme, 7, seed=0, alpha=0.5, classes_per_party=2, sizes=",".join(map(str, SIZES)))
    assert all(np.array_equal(a, b) for a, b in zip(parts, SPLITTERS[scheme](0)))


def test_dispatcher_errors():
    valid = "iid, dirichlet, shards, quantity, natural, sizes"
    with pytest.raises(DataError, match=f"unknown partition scheme 'pathological'.*{valid}"):
        partition(make_dataset(), "pathological", 3, 0)
    for bad in (0, 1001, 2.5, True):
        with pytest.raises(DataError, match="parties must be"):
            partition(make_dataset(), "iid", bad, 0)
    with pytest.raises(DataError, match="natural ids.*femnist"):
        partition(make_dataset(), "natural", 3, 0)
    with pytest.raises(DataError, match="alpha must be a positive"):
        partition(make_dataset(), "dirichlet", 3, 0, alpha=0.0)


def test_iid_is_the_benchmark_recipe():
    parts = iid(60000, 100, 0)
    expected = np.array_split(np.random.default_rng(0).permutation(60000), 100)
    assert all(len(p) == 600 and np.array_equal(p, e) for p, e in zip(parts, expected))


def niid_bench_reference(labels, parties, alpha, seed, min_require_size=10):
    """NIID-Bench's partition_data('noniid-labeldir') with np.random replaced by a Generator."""
    rng = np.random.default_rng(seed)
    n, min_size = len(labels), 0
    while min_size < min_require_size:
        idx_batch = [[] for _ in range(parties)]
        for k in range(labels.max() + 1):
            idx_k = np.where(labels == k)[0]
            rng.shuffle(idx_k)
            proportions = rng.dirichlet(np.repeat(alpha, parties))
            proportions = np.array([p * (len(idx_j) < n / parties)
                                    for p, idx_j in zip(proportions, idx_batch)])
            proportions = proportions / proportions.sum()
            proportions = (np.cumsum(proportions) * len(idx_k)).astype(int)[:-1]
            idx_batch = [idx_j + idx.tolist()
                         for idx_j, idx in zip(idx_batch, np.split(idx_k, proportions))]
            min_size = min(len(idx_j) for idx_j in idx_batch)
    out = []
    for j in range(parties):
        batch = np.array(idx_batch[j])
        rng.shuffle(batch)
        out.append(batch)
    return out


@pytest.mark.parametrize("alpha, parties, seed", [(0.5, 10, 0), (0.1, 20, 3), (100.0, 5, 1)])
def test_dirichlet_matches_niid_bench(alpha, parties, seed):
    parts = dirichlet(LABELS, parties, alpha, seed)
    reference = niid_bench_reference(LABELS, parties, alpha, seed)
    assert all(np.array_equal(p, r) for p, r in zip(parts, reference))


def test_dirichlet_min_size_and_skew():
    assert min(len(p) for p in dirichlet(LABELS, 10, 0.1, 0)) < 60
    parts = dirichlet(LABELS, 10, 0.1, 0, min_size=60)  # needs redraws
    assert min(len(p) for p in parts) >= 60
    hist = label_histogram(LABELS, parts, 10)
    assert (hist > 0).sum(axis=1).mean() < 6  # α = 0.1 leaves most parties a few classes


def test_dirichlet_impossible():
    with pytest.raises(DataError, match="need 1010, but the training set has 1000"):
        dirichlet(LABELS, 101, 0.5, 0)
    with pytest.raises(DataError, match="no draw with alpha=0.001.*larger alpha"):
        dirichlet(LABELS[:200], 19, 0.001, 0, min_size=10)


def test_shards_classes_per_party():
    parts = shards(LABELS, 20, 2, 0)  # 40 shards of 25: each within one class
    assert_disjoint_cover(parts, 1000, 20)
    assert ((label_histogram(LABELS, parts, 10) > 0).sum(axis=1) <= 2).all()
    with pytest.raises(DataError, match="classes_per_party must be between 1 and 2"):
        shards(LABELS, 500, 3, 0)


def test_quantity_skew_sizes():
    parts = quantity_skew(1000, 50, 0.1, 0)
    sizes = [len(p) for p in parts]
    assert min(sizes) >= 1 and sum(sizes) == 1000 and max(sizes) > 100
    assert_disjoint_cover(quantity_skew(10, 10, 0.5, 0), 10, 10)


def test_natural_respects_groups():
    groups = np.random.default_rng(0).integers(0, 30, size=1000) * 7 + 3  # arbitrary writer ids
    parts = natural(groups, 8, 0)
    assert_disjoint_cover(parts, 1000, 8)
    owners = [set(groups[p].tolist()) for p in parts]
    assert all(a.isdisjoint(b) for i, a in enumerate(owners) for b in owners[i + 1:])
    assert sorted(len(o) for o in owners) == [3, 3, 4, 4, 4, 4, 4, 4]  # 30 writers round-robin
    one_each = natural(groups, 30, 0)
    assert all(len(set(groups[p].tolist())) == 1 for p in one_each)
    with pytest.raises(DataError, match="31 parties requested but .* only 30 natural groups"):
        natural(groups, 31, 0)


def test_histogram_and_table():
    parts = [np.array([0, 1, 2]), np.array([3])]
    hist = label_histogram(np.array([0, 0, 2, 1]), parts, 3)
    assert hist.tolist() == [[2, 0, 1], [0, 1, 0]]
    assert format_histogram(hist).splitlines() == [
        "| party | n | 0 | 1 | 2 |",
        "|---|---|---|---|---|",
        "| 0 | 3 | 2 | 0 | 1 |",
        "| 1 | 1 | 0 | 1 | 0 |",
    ]


def test_split_holdout():
    indices = np.arange(100, 200)
    train, val = split_holdout(indices, 0.2, 0)
    assert len(val) == 20 and len(train) == 80 and set(train).isdisjoint(val)
    assert np.array_equal(np.sort(np.concatenate([train, val])), indices)
    assert np.array_equal(split_holdout(indices, 0.2, 0)[1], val)
    assert len(split_holdout(indices, 0.0, 0)[1]) == 0
    with pytest.raises(DataError, match=r"in \[0, 1\)"):
        split_holdout(indices, 1.0, 0)


def test_fmnist_benchmark_shapes():
    data = load_dataset("synthetic", n_train=60000, n_test=10)
    parts = partition(data, "dirichlet", 100, seed=0, alpha=0.5)
    assert_disjoint_cover(parts, 60000, 100)
    assert min(len(p) for p in parts) >= 10


def test_draw_gives_each_party_its_own_draws_with_replacement():
    from pollen.data.partition import draw

    parts = draw(60_000, 100_000, 6, 0)  # BENCHMARKS.md W7 beyond 10,000 parties
    assert len(parts) == 100_000 and all(len(p) == 6 for p in parts[:100])
    np.testing.assert_array_equal(np.stack(parts[:50]), np.random.default_rng(0).integers(0, 60_000, (100_000, 6))[:50])
    assert parts[7].base is parts[8].base  # rows of one array: views, no copies
