"""t-out-of-n Shamir secret sharing over a prime field, for 32-byte secrets.

Shamir, "How to share a secret", CACM 1979. A secret ``s`` is the constant term of a random
polynomial ``f`` of degree ``t − 1`` over GF(p); share ``i`` is ``(x_i, f(x_i))``. Any ``t`` shares
give ``s`` by Lagrange interpolation at 0; any ``t − 1`` shares are uniformly distributed whatever
``s`` is, so they reveal nothing about it.

The default field is GF(2^521 − 1) (a Mersenne prime), larger than every 32-byte secret. Python's
integers make this exact and fast enough (shares go to a party's neighbours only: a few dozen
evaluations per secret); no library here offers Shamir over a field this size, hence hand-written.
Polynomial coefficients come from ``secrets`` (the OS's cryptographically secure source).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from pollen.errors import PrivacyError

PRIME = 2**521 - 1
SHARE_BYTES = 2 + 66  # x (uint16) + y (66 bytes, big-endian, < 2^521)


def split_int(secret: int, threshold: int, count: int, prime: int = PRIME) -> list[tuple[int, int]]:
    """Shares ``(x, f(x))`` for ``x = 1 … count`` of ``secret`` (any ``threshold`` rebuild it).

    Raises:
        PrivacyError: ``secret`` outside the field, or ``threshold`` not in ``2 … count``.
    """
    if not 0 <= secret < prime:
        raise PrivacyError(f"secret must lie in [0, {prime}); got a {secret.bit_length()}-bit value")
    if not 1 <= threshold <= count < prime:
        raise PrivacyError(f"Shamir needs 1 ≤ threshold ≤ count; got threshold={threshold}, count={count}")
    coeffs = [secret] + [secrets.randbelow(prime) for _ in range(threshold - 1)]
    return [(x, evaluate(coeffs, x, prime)) for x in range(1, count + 1)]


def evaluate(coeffs: Sequence[int], x: int, prime: int = PRIME) -> int:
    """``f(x) = Σ coeffs[i] · x^i`` over GF(prime) (Horner's rule)."""
    y = 0
    for c in reversed(coeffs):
        y = (y * x + c) % prime
    return y


def reconstruct_int(shares: Sequence[tuple[int, int]], prime: int = PRIME) -> int:
    """Lagrange interpolation at 0 through ``shares`` (pass at least ``threshold`` of them).

    With fewer than ``threshold`` shares the result is some field element unrelated to the secret.

    Raises:
        PrivacyError: no shares, or two shares with the same ``x``.
    """
    xs = [x % prime for x, _ in shares]
    if not shares or len(set(xs)) != len(xs):
        raise PrivacyError(f"need distinct share points to reconstruct; got x = {xs}")
    total = 0
    for j, (xj, yj) in enumerate(shares):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % prime
                den = den * (xm - xj) % prime
        total = (total + yj * num * pow(den, -1, prime)) % prime
    return total


def split(secret: bytes, threshold: int, count: int) -> list[bytes]:
    """Shares of a 32-byte secret, each ``SHARE_BYTES`` long (x then y)."""
    if len(secret) != 32:
        raise PrivacyError(f"Shamir shares 32-byte secrets here; got {len(secret)} bytes")
    return [share_to_bytes(x, y) for x, y in split_int(int.from_bytes(secret, "big"), threshold, count)]


def reconstruct(shares: Sequence[bytes]) -> bytes:
    """The 32-byte secret from ``threshold`` or more shares made by ``split``.

    Raises:
        PrivacyError: malformed shares, or a result that is not a 32-byte secret (too few shares).
    """
    value = reconstruct_int([share_from_bytes(s) for s in shares])
    if value >= 2**256:
        raise PrivacyError("reconstructed value is not a 32-byte secret: fewer shares than the threshold?")
    return value.to_bytes(32, "big")


def share_to_bytes(x: int, y: int) -> bytes:
    """``x`` as uint16 then ``y`` as 66 big-endian bytes."""
    return x.to_bytes(2, "big") + y.to_bytes(SHARE_BYTES - 2, "big")


def share_from_bytes(data: bytes) -> tuple[int, int]:
    """Inverse of ``share_to_bytes``."""
    if len(data) != SHARE_BYTES:
        raise PrivacyError(f"a Shamir share is {SHARE_BYTES} bytes; got {len(data)}")
    return int.from_bytes(data[:2], "big"), int.from_bytes(data[2:], "big")
