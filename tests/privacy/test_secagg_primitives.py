"""Field quantisation, masks (uniformity: chi-square), share encryption and the neighbour graph."""

import numpy as np
import pytest
from scipy.stats import chisquare

from pollen.errors import PrivacyError
from pollen.privacy.secagg import field, graph, masks, threads

P_MIN = 1e-4  # a chi-square p-value below this fails the uniformity test


def test_range_check_refuses_overflow():
    spec = field.choose(32, clip=1.0, total_weight=1000)
    field.check_range(spec, 1000)  # the chosen scale is exactly at the limit
    with pytest.raises(PrivacyError, match="overflow"):
        field.check_range(spec, 1001)
    with pytest.raises(PrivacyError, match="overflow"):
        field.check_range(field.FieldSpec(32, 1.0, 2.0**31), 1)
    with pytest.raises(PrivacyError, match="cannot fit"):
        field.choose(32, clip=1.0, total_weight=2**31)
    assert field.choose(64, 1.0, 2**31).bound >= 2**31


def test_sum_at_the_range_limit_does_not_wrap():
    """n parties all at +clip (and all at −clip) with the largest weights the field allows."""
    weights = [3000, 2000, 1000]
    spec = field.choose(32, 0.5, sum(weights))
    rng = np.random.default_rng(0)
    for value in (0.5, -0.5, 7.0, -7.0):  # beyond clip: clipped to ±0.5
        acc = np.zeros(4, np.uint32)
        for w in weights:
            acc += field.quantize(np.full(4, value), spec, w, rng)[0]
        np.testing.assert_allclose(field.dequantize(acc, spec) / sum(weights), np.sign(value) * 0.5, atol=spec.error_bound)


def test_stochastic_rounding_is_unbiased_and_bounded():
    spec = field.FieldSpec(32, 1.0, 10.0)  # coarse on purpose: 0.1 steps
    x = np.full(200_000, 0.123)
    q, clipped = field.quantize(x, spec, 1, np.random.default_rng(1))
    back = field.dequantize(q, spec)
    assert clipped == 0.0
    assert np.max(np.abs(back - x)) <= spec.error_bound + 1e-12
    assert abs(back.mean() - 0.123) < 3 * 0.05 / np.sqrt(x.size)  # within 3 standard errors


def _chi2_uniform(values: np.ndarray, bits: int, bins: int = 256) -> float:
    top = (values >> np.uint64(bits - 8)).astype(np.int64) if bits == 64 else (values >> 24).astype(np.int64)
    low = (values & 0xFF).astype(np.int64)
    return min(chisquare(np.bincount(top, minlength=bins)).pvalue, chisquare(np.bincount(low, minlength=bins)).pvalue)


@pytest.mark.parametrize("dtype,bits", [(np.uint32, 32), (np.uint64, 64)])
def test_mask_stream_looks_uniform(dtype, bits):
    """1,000,000 mask elements from a fixed key: the top and low bytes pass a chi-square test
    against the uniform distribution at p > 1e-4 (deterministic: the key is fixed)."""
    stream = masks.keystream(bytes(range(32)), 1_000_000, dtype)
    assert _chi2_uniform(stream, bits) > P_MIN
    assert abs(float(np.corrcoef(stream[:-1].astype(np.float64), stream[1:].astype(np.float64))[0, 1])) < 0.01


def test_add_stream_matches_the_keystream_and_cancels():
    key = masks.derive(b"k" * 32, b"test", 1)
    size = masks.CHUNK * 2 + 123  # crosses block boundaries
    acc = np.arange(size, dtype=np.uint32)
    masks.add_stream(acc, key, +1)
    np.testing.assert_array_equal(acc, np.arange(size, dtype=np.uint32) + masks.keystream(key, size, np.uint32))
    masks.add_stream(acc, key, -1)
    np.testing.assert_array_equal(acc, np.arange(size, dtype=np.uint32))


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_threaded_expansion_is_bit_identical_to_one_pass(monkeypatch, dtype):
    """Masks expanded by several threads, each starting its run of blocks at a CTR offset, equal
    the single keystream (runs of unequal length, a final partial block, both ring widths)."""
    monkeypatch.setattr(threads, "count", lambda: 3)
    keyed = [(masks.derive(bytes([i]) * 32, b"test", 1), +1 if i % 2 else -1) for i in range(3)]
    size = masks.CHUNK * 7 + 123
    acc = np.arange(size, dtype=dtype)
    masks.add_streams(acc, keyed)
    want = np.arange(size, dtype=dtype)
    for key, sign in keyed:
        want = want + masks.keystream(key, size, dtype) if sign > 0 else want - masks.keystream(key, size, dtype)
    np.testing.assert_array_equal(acc, want)


def test_quantize_weights_exact_segments_and_64_bit_ring():
    """Weights multiply exactly, integer segments stay whole (clipped to ±B), clipping is
    counted on float coordinates only, and a negative sum reads back in the 64-bit ring."""
    spec = field.choose(64, 1.0, 10**12)
    x = np.concatenate([np.full(1000, -0.3), [5.0, -9.0], np.full(70_000, 2.0)])  # crosses a block
    q, clipped = field.quantize(x, spec, 1000, np.random.default_rng(2), exact=[(1000, 1002)])
    signed = q.view(np.int64)
    assert clipped == 70_000 / x.size
    np.testing.assert_array_equal(signed[1000:1002], [5000, -9000])
    np.testing.assert_array_equal(signed[1002:], spec.bound * 1000)
    back = field.dequantize(q, spec, exact=[(1000, 1002)]) / 1000
    assert np.max(np.abs(back[:1000] + 0.3)) <= spec.error_bound


def test_key_agreement_is_symmetric_and_shares_are_authenticated():
    a, b = masks.new_private_key(), masks.new_private_key()
    k_ab = masks.agree(a, masks.public_bytes(b))
    assert k_ab == masks.agree(b, masks.public_bytes(a))
    key = masks.derive(k_ab, b"share", 3)
    assert masks.derive(k_ab, b"share", 4) != key and masks.derive(k_ab, b"mask", 3) != key
    sealed = masks.seal(key, b"secret share", b"1>2@3")
    assert masks.open_sealed(key, sealed, b"1>2@3") == b"secret share"
    with pytest.raises(PrivacyError, match="authentication"):
        masks.open_sealed(key, sealed, b"1>4@3")  # misrouted
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(PrivacyError, match="authentication"):
        masks.open_sealed(key, bytes(tampered), b"1>2@3")
    with pytest.raises(PrivacyError, match="public key"):
        masks.agree(a, b"\x00" * 31)


@pytest.mark.parametrize("n,k", [(10, 4), (100, 20), (7, 6), (5, None), (50, 9)])
def test_harary_graph_is_regular_and_symmetric(n, k):
    ids = [str(i) for i in range(n)]
    kk = graph.degree(k, n)
    g = graph.harary(ids, kk, b"\x01" * 32)
    assert all(len(g[p]) == kk and p not in g[p] for p in ids)
    assert all(p in g[q] for p in ids for q in g[p])
    assert kk % 2 == 0 or kk == n - 1
    assert g == graph.harary(ids, kk, b"\x01" * 32)  # the seed fixes the graph
    if kk < n - 1:
        assert g != graph.harary(ids, kk, b"\x02" * 32)


def test_threshold_from_fraction():
    assert graph.threshold(0.5, 9) == 5
    assert graph.threshold(0.01, 9) == 2  # at least two
    assert graph.threshold(1.0, 4) == 5


def test_failure_bound_matches_the_hypergeometric_tails():
    from scipy.stats import hypergeom

    n, k, t, dropped = 100, 40, 17, 30
    want = dropped * hypergeom(99, 70, k).cdf(t - 1) + (n - dropped) * hypergeom(99, 69, k).cdf(t - 2)
    assert graph.failure_bound(n, k, t, dropped) == pytest.approx(want, rel=1e-9)
    assert graph.failure_bound(10, 9, 5, 3) == 0.0  # 7 survivors ≥ 5 always
    assert graph.failure_bound(10, 9, 8, 3) == 1.0  # 7 survivors < 8 always (capped)
