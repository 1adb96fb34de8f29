"""Robust aggregators against numpy / scipy / float64 reference loops on small arrays."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import stats

from pollen.errors import StrategyError
from pollen.strategy.robust import Bulyan, CoordinateMedian, Krum, NormBound, TrimmedMean
from pollen.types import Update


def _updates(rows: np.ndarray, counts=None) -> list[Update]:
    """One update per row: a (2, 3) weight, the rest a bias, plus an integer counter."""
    out = []
    for i, r in enumerate(rows):
        delta = {"w": r[:6].reshape(2, 3).astype(np.float32), "b": r[6:].astype(np.float32),
                 "n": np.array(i, dtype=np.int64)}
        out.append(Update(delta, num_examples=int(counts[i]) if counts is not None else 10))
    return out


def _flat(state) -> np.ndarray:
    return np.concatenate([state["w"].reshape(-1), state["b"]]).astype(np.float64)


@pytest.fixture
def rows():
    return np.random.default_rng(3).normal(size=(9, 8)).astype(np.float32).astype(np.float64)  # (n, d)


def test_median_matches_numpy(rows):
    out = CoordinateMedian(f=2).aggregate(_updates(rows))
    np.testing.assert_allclose(_flat(out), np.median(rows, axis=0), rtol=1e-6)
    assert out["n"] == 4 and out["n"].dtype == np.int64  # rounded median of 0…8
    assert out["w"].dtype == np.float32 and out["w"].shape == (2, 3)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.25, 0.34, 0.45])
def test_trimmed_mean_matches_scipy(rows, beta):
    out = TrimmedMean(beta).aggregate(_updates(rows))
    np.testing.assert_allclose(_flat(out), stats.trim_mean(rows, beta, axis=0), rtol=1e-6)


def test_krum_picks_the_central_update_hand_computed():
    # 1-D points 0, 1, 2.5, 4, 100 (padded with zeros to d=8); n=5, f=1: each score sums the
    # n - f - 2 = 2 smallest squared distances: 0 → 1+6.25, 1 → 1+2.25, 2.5 → 2.25+2.25,
    # 4 → 2.25+9, 100 → 96²+97.5²; the best is the point 1.
    pts = [0.0, 1.0, 2.5, 4.0, 100.0]
    rows = np.zeros((5, 8))
    rows[:, 0] = pts
    out = Krum(f=1, m=1).aggregate(_updates(rows))
    assert _flat(out)[0] == pytest.approx(1.0)
    assert np.all(_flat(out)[1:] == 0)


def test_multikrum_averages_the_best_m():
    rows = np.zeros((5, 8))
    rows[:, 0] = [0.0, 1.0, 2.5, 4.0, 100.0]
    out = Krum(f=1, m=3).aggregate(_updates(rows))  # best three scores: 1, 2.5, 0
    assert _flat(out)[0] == pytest.approx((0.0 + 1.0 + 2.5) / 3)
    default = Krum(f=1, m=None).aggregate(_updates(rows))  # m = n - f = 4: all but the outlier
    assert _flat(default)[0] == pytest.approx((0.0 + 1.0 + 2.5 + 4.0) / 4)


def _bulyan_reference(x: np.ndarray, f: int) -> np.ndarray:
    """Bulyan as El Mhamdi et al. 2018 write it, with plain float64 loops."""
    n, d = x.shape
    remaining = list(range(n))
    chosen = []
    while len(chosen) < n - 2 * f:
        scores = []
        for i in remaining:
            dists = sorted(float(np.sum((x[i] - x[j]) ** 2)) for j in remaining if j != i)
            scores.append(sum(dists[: max(len(remaining) - f - 2, 1)]))  # Krum's n - f - 2 nearest (≥ 1)
        best = remaining[int(np.argmin(scores))]
        chosen.append(best)
        remaining.remove(best)
    sel = x[chosen]
    beta = len(chosen) - 2 * f
    out = np.empty(d)
    for c in range(d):
        col = sel[:, c]
        med = np.median(col)
        closest = sorted(range(len(col)), key=lambda i: (abs(col[i] - med), i))[:beta]
        out[c] = np.mean(col[closest])
    return out


def test_bulyan_matches_float64_reference():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(11, 8))
    x[:2] += 50.0  # two attackers far away
    out = Bulyan(f=2).aggregate(_updates(x))
    np.testing.assert_allclose(_flat(out), _bulyan_reference(x.astype(np.float32).astype(np.float64), 2), rtol=1e-5)
    assert np.all(np.abs(_flat(out)) < 5)  # the attackers did not move it


def test_normbound_clips_then_weighted_mean():
    rows = np.zeros((3, 8))
    rows[0, 0] = 1.0  # norm 1: passes
    rows[1, :2] = [6.0, 8.0]  # norm 10: scaled to norm 2
    # row 2 is all zero: passes without a division by zero
    out = NormBound(bound=2.0).aggregate(_updates(rows, counts=[1, 1, 2]))
    expect = (rows[0] + rows[1] * 0.2 + 0) / 4.0
    np.testing.assert_allclose(_flat(out), expect, rtol=1e-6)
    adaptive = NormBound().aggregate(_updates(rows))  # bound = median norm = 1
    np.testing.assert_allclose(_flat(adaptive), (rows[0] + rows[1] / 10.0) / 3, rtol=1e-6)


def test_aggregators_do_not_mutate_inputs(rows):
    ups = _updates(rows)
    before = [{k: v.copy() for k, v in u.delta.items()} for u in ups]
    for agg in (CoordinateMedian(2), TrimmedMean(0.2, 1), Krum(2), Krum(2, None), Bulyan(1), NormBound(0.5)):
        agg.aggregate(ups)
        assert agg.linear is False
    for u, b in zip(ups, before):
        for k in b:
            np.testing.assert_array_equal(u.delta[k], b[k])


@pytest.mark.parametrize(
    ("agg", "n", "needle"),
    [
        (Krum(f=2), 6, "n > 2f + 2"),
        (Krum(f=2, m=None), 6, "n > 2f + 2"),
        (Bulyan(f=2), 10, "n ≥ 4f + 3"),
        (CoordinateMedian(f=3), 6, "n > 2f"),
        (TrimmedMean(0.1, f=1), 9, "⌊β·n⌋ ≥ f"),
    ],
)
def test_refuses_what_its_math_cannot_handle(agg, n, needle):
    with pytest.raises(StrategyError, match=re.escape(needle)) as err:
        agg.aggregate(_updates(np.zeros((n, 8))))
    assert f"n={n}" in str(err.value) and "--byzantine-f" in str(err.value)
    agg.check(n + 1 if not isinstance(agg, (Bulyan, TrimmedMean)) else 100)  # enough updates pass


def test_bad_parameters_refused():
    with pytest.raises(StrategyError, match=r"\[0, 0.5\)"):
        TrimmedMean(0.5)
    with pytest.raises(StrategyError, match="multikrum_m"):
        Krum(f=1, m=6).check(5)
    with pytest.raises(StrategyError, match="norm_bound"):
        NormBound(bound=0.0)


def test_column_blocks_give_the_same_result(rows, monkeypatch):
    """The rules work on blocks of coordinates; blocks of 3 (uneven split of d = 8) change nothing."""
    import pollen.strategy.robust as robust

    aggs = (CoordinateMedian(2), TrimmedMean(0.25, 2), Krum(2, None), Bulyan(1), NormBound(1.0))
    whole = [_flat(a.aggregate(_updates(rows))) for a in aggs]
    monkeypatch.setattr(robust, "_BLOCK", 3)
    for a, ref in zip(aggs, whole):
        np.testing.assert_allclose(_flat(a.aggregate(_updates(rows))), ref, rtol=1e-6)
