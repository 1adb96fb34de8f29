"""Shamir sharing: any t shares rebuild the secret; t − 1 shares say nothing about it."""

import itertools
import os
import random
from collections import Counter

import pytest

from pollen.errors import PrivacyError
from pollen.privacy.secagg import shamir


@pytest.mark.parametrize("t,n", [(2, 2), (3, 5), (5, 9), (11, 21)])
def test_every_t_subset_rebuilds_the_secret(t, n):
    secret = os.urandom(32)
    shares = shamir.split(secret, t, n)
    assert len(shares) == n and all(len(s) == shamir.SHARE_BYTES for s in shares)
    subsets = list(itertools.combinations(shares, t))
    for subset in random.Random(0).sample(subsets, min(len(subsets), 30)):
        assert shamir.reconstruct(list(subset)) == secret
    assert shamir.reconstruct(shares) == secret  # more than t also works


def test_t_minus_one_shares_give_a_wrong_value():
    secret = os.urandom(32)
    shares = shamir.split(secret, 5, 9)
    for subset in itertools.combinations(shares, 4):
        try:
            got = shamir.reconstruct(list(subset))
        except PrivacyError:  # usually not even a 32-byte number
            continue
        assert got != secret


def test_t_minus_one_shares_are_independent_of_the_secret_by_enumeration():
    """Over GF(11) with t = 3: for every secret, the pair of shares at x = 1, 2 takes every value
    in GF(11)² exactly once as the random coefficients range over GF(11)² — so two shares are
    uniformly distributed whatever the secret (perfect secrecy, not a statistical claim)."""
    p, t = 11, 3
    for secret in range(p):
        seen = Counter()
        for a1, a2 in itertools.product(range(p), repeat=t - 1):
            coeffs = [secret, a1, a2]
            seen[(shamir.evaluate(coeffs, 1, p), shamir.evaluate(coeffs, 2, p))] += 1
        assert len(seen) == p * p and set(seen.values()) == {1}


def test_t_minus_one_real_shares_are_consistent_with_any_secret():
    """For the real field: the t − 1 shares plus ANY candidate secret define a degree-(t−1)
    polynomial that reproduces every one of those shares, so no candidate can be excluded."""
    t = 4
    real = shamir.split_int(int.from_bytes(os.urandom(32), "big"), t, 7)[: t - 1]
    for candidate in (0, 1, int.from_bytes(os.urandom(32), "big")):
        points = [(0, candidate), *real]
        for x, y in real:  # Lagrange through points evaluated at the shares' x
            assert _lagrange_at(points, x) == y
        assert _lagrange_at(points, 0) == candidate


def _lagrange_at(points, at, p=shamir.PRIME):
    total = 0
    for j, (xj, yj) in enumerate(points):
        num = den = 1
        for m, (xm, _) in enumerate(points):
            if m != j:
                num = num * (at - xm) % p
                den = den * (xj - xm) % p
        total = (total + yj * num * pow(den, -1, p)) % p
    return total


def test_bad_inputs_are_refused():
    with pytest.raises(PrivacyError, match="32-byte"):
        shamir.split(b"short", 2, 3)
    with pytest.raises(PrivacyError, match="threshold"):
        shamir.split(os.urandom(32), 4, 3)
    s = shamir.split(os.urandom(32), 2, 3)
    with pytest.raises(PrivacyError, match="distinct"):
        shamir.reconstruct([s[0], s[0]])
    with pytest.raises(PrivacyError, match="bytes"):
        shamir.reconstruct([s[0][:-1], s[1]])
