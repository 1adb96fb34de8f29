"""Paillier encryption of fixed-point vectors, for hetero logistic regression.

Paillier, "Public-Key Cryptosystems Based on Composite Degree Residuosity Classes", EUROCRYPT
1999: Enc(m) = (1 + n)^m · r^n mod n², additively homomorphic (Enc(a)·Enc(b) = Enc(a + b),
Enc(a)^k = Enc(k·a), all modulo n). Keys, encryption and decryption are ``phe``'s (python-paillier;
``gmpy2`` makes them about 10× faster, ENVIRONMENT.md); its obfuscation r comes from
``random.SystemRandom`` (the OS's CSPRNG). The homomorphic sums and products below are written on
plain integers (``gmpy2`` when installed) so that a vector costs one call per element.

Reals travel as fixed-point integers modulo n: ``round(v · 2^bits) mod n``, negative numbers as
``n − |v|``; a product of two encodings carries the sum of their ``bits``. Masks are uniform in
Z_n, so a masked value ``(m + r) mod n`` that the key holder decrypts is uniformly random to it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pollen.errors import ProtocolError, require

log = logging.getLogger("pollen.vertical")
MIN_SECURE_BITS = 2048


def _phe() -> Any:
    return require("phe", "vertical", "hetero logistic regression (Paillier encryption)")


try:  # pragma: no cover - depends on the installed extra
    import gmpy2

    _mpz = gmpy2.mpz
    _powmod = gmpy2.powmod
except ImportError:  # pragma: no cover
    gmpy2 = None
    _mpz = int
    _powmod = pow


def has_gmpy2() -> bool:
    """Whether the fast big-integer arithmetic is installed (``pip install 'pollen-fl[vertical]'``)."""
    return gmpy2 is not None


@dataclass(frozen=True)
class PublicKey:
    """The public half: what every party gets from the key holder.

    Attributes:
        n: the modulus.
    """

    n: int

    @property
    def nsquare(self) -> int:
        return self.n * self.n

    @property
    def cipher_bytes(self) -> int:
        """Bytes of one ciphertext (an integer below n²)."""
        return (self.nsquare.bit_length() + 7) // 8

    @property
    def plain_bytes(self) -> int:
        """Bytes of one plaintext (an integer below n)."""
        return (self.n.bit_length() + 7) // 8

    def to_array(self) -> np.ndarray:
        """The key as bytes (a uint8 vector) for the wire."""
        return np.frombuffer(self.n.to_bytes(self.plain_bytes, "little"), dtype=np.uint8).copy()

    @classmethod
    def from_array(cls, arr: np.ndarray, min_bits: int = 512) -> "PublicKey":
        """Rebuild a key sent by the key holder.

        Raises:
            ProtocolError: a modulus shorter than ``min_bits`` or even.
        """
        n = int.from_bytes(np.ascontiguousarray(arr, dtype=np.uint8).tobytes(), "little")
        if n.bit_length() < min_bits or n % 2 == 0:
            raise ProtocolError(f"Paillier public key: a modulus of {n.bit_length()} bits (odd, ≥ {min_bits}) expected")
        return cls(n)

    # ------------------------------------------------------------ encryption and arithmetic
    def encrypt(self, plain: Sequence[int]) -> list[Any]:
        """Fresh ciphertexts of integers in [0, n) (each with its own CSPRNG obfuscation)."""
        pub = _phe().PaillierPublicKey(self.n)
        return [_mpz(pub.raw_encrypt(int(m))) for m in plain]

    def add(self, a: Sequence[Any], b: Sequence[Any]) -> list[Any]:
        """Enc(a + b), element by element."""
        nsq = _mpz(self.nsquare)
        return [x * y % nsq for x, y in zip(a, b, strict=True)]

    def scale(self, k: Sequence[int], cipher: Sequence[Any]) -> list[Any]:
        """Enc(k_i·m_i), element by element, for integers k (negative ones raise the inverse)."""
        nsq = _mpz(self.nsquare)
        out = []
        for ki, c in zip(list(k), cipher, strict=True):
            ki = int(ki)
            out.append(_powmod(_mpz(c), ki, nsq) if ki >= 0 else _powmod(_powmod(_mpz(c), -1, nsq), -ki, nsq))
        return out

    def dot(self, x: np.ndarray, cipher: Sequence[Any]) -> list[Any]:
        """Enc(xᵀ·m) for an integer matrix ``x`` (B, d) and ciphertexts of m (B,): d ciphertexts.

        Negative entries raise the inverse ciphertext to |x|, so exponents stay small.
        """
        nsq = _mpz(self.nsquare)
        c = [_mpz(v) for v in cipher]
        inv = [_powmod(v, -1, nsq) for v in c]
        out = []
        for f in range(x.shape[1]):
            acc = _mpz(1)
            for i, k in enumerate(x[:, f].tolist()):
                if k > 0:
                    acc = acc * _powmod(c[i], k, nsq) % nsq
                elif k < 0:
                    acc = acc * _powmod(inv[i], -k, nsq) % nsq
            out.append(acc)
        return out

    # ------------------------------------------------------------ the wire
    def ciphers_to_array(self, cipher: Sequence[Any]) -> np.ndarray:
        """Ciphertexts as a (N, cipher_bytes) uint8 array, little-endian."""
        return _ints_to_array(cipher, self.cipher_bytes)

    def ciphers_from_array(self, arr: np.ndarray, count: int | None = None, what: str = "ciphertexts") -> list[Any]:
        """Ciphertexts sent by a peer, each checked to lie in (0, n²).

        Raises:
            ProtocolError: another shape, count, or an out-of-range value.
        """
        values = _ints_from_array(arr, self.cipher_bytes, what)
        if count is not None and len(values) != count:
            raise ProtocolError(f"{what}: expected {count} ciphertexts, got {len(values)}")
        nsq = self.nsquare
        if any(not 0 < v < nsq for v in values):
            raise ProtocolError(f"{what}: a value outside (0, n²) is no ciphertext of this key")
        return [_mpz(v) for v in values]

    def plains_to_array(self, plain: Sequence[int]) -> np.ndarray:
        return _ints_to_array(plain, self.plain_bytes)

    def plains_from_array(self, arr: np.ndarray, count: int | None = None, what: str = "plaintexts") -> list[int]:
        values = _ints_from_array(arr, self.plain_bytes, what)
        if count is not None and len(values) != count:
            raise ProtocolError(f"{what}: expected {count} values, got {len(values)}")
        if any(not 0 <= v < self.n for v in values):
            raise ProtocolError(f"{what}: a value outside [0, n)")
        return values

    # ------------------------------------------------------------ fixed point
    def encode(self, values: np.ndarray, bits: int) -> list[int]:
        """``round(v · 2^bits) mod n`` for each value."""
        n = self.n
        return [int(v) % n for v in fixed_point(values, bits).tolist()]

    def decode(self, plain: Sequence[int], bits: int) -> np.ndarray:
        """Inverse of ``encode`` (values above n/2 are negative)."""
        n, half = self.n, self.n // 2
        return np.array([(v - n if v > half else v) / 2.0**bits for v in plain], dtype=np.float64)

    def random_masks(self, count: int) -> list[int]:
        """Uniform masks in Z_n from the OS's CSPRNG."""
        import secrets

        return [secrets.randbelow(self.n) for _ in range(count)]


def fixed_point(values: np.ndarray, bits: int) -> np.ndarray:
    """``round(v · 2^bits)`` as Python-int objects (no overflow for any size)."""
    scaled = np.rint(np.asarray(values, dtype=np.float64) * 2.0**bits)
    return np.array([int(v) for v in scaled.ravel()], dtype=object).reshape(scaled.shape)


class PrivateKey:
    """The key holder's (the arbiter's) key pair; the private half never leaves its process.

    Args:
        bits: modulus size (2048 by default; smaller keys are for tests only and logged as such).
    """

    def __init__(self, bits: int = 2048) -> None:
        phe = _phe()
        if bits < MIN_SECURE_BITS:
            log.warning("Paillier key of %d bits: below %d bits this is for tests only, not secure", bits, MIN_SECURE_BITS)
        if not has_gmpy2():
            log.warning("gmpy2 is not installed: Paillier runs about 10x slower (pip install 'pollen-fl[vertical]')")
        pub, self._key = phe.generate_paillier_keypair(n_length=bits)
        self.public = PublicKey(pub.n)

    def decrypt(self, cipher: Sequence[Any]) -> list[int]:
        """The plaintexts in [0, n)."""
        return [int(self._key.raw_decrypt(int(c))) for c in cipher]


def _ints_to_array(values: Sequence[Any], width: int) -> np.ndarray:
    buf = b"".join(int(v).to_bytes(width, "little") for v in values)
    return np.frombuffer(buf, dtype=np.uint8).reshape(len(values), width).copy()


def _ints_from_array(arr: np.ndarray, width: int, what: str) -> list[int]:
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != width:
        raise ProtocolError(f"{what}: expected a uint8 array of shape (N, {width}), got {arr.dtype}{list(arr.shape)}")
    buf = np.ascontiguousarray(arr).tobytes()
    return [int.from_bytes(buf[i : i + width], "little") for i in range(0, len(buf), width)]
