"""Keys and masks: X25519 key agreement, HKDF key derivation, AES-256-CTR keystreams expanded to
ring elements, and AES-GCM encryption of Shamir shares between two parties.

Bonawitz et al. 2017, Sec. 4 (pairwise masks from Diffie-Hellman agreement, a PRG, authenticated
encryption of shares); Bell et al. 2020 (the same over a sparse neighbour graph). Everything here
is the ``cryptography`` package (OpenSSL): keys from the OS's secure generator, masks from a real
stream cipher keyed by a 256-bit derived key, never a seeded statistical RNG. AES-CTR rather than
ChaCha20 because it ran 2.4× faster on this CPU (AES-NI): 0.8 ms per 6.6 MB mask.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pollen.errors import PrivacyError
from pollen.privacy.secagg import threads

CHUNK = 1 << 16  # ring elements per keystream block: 256 KiB of uint32 stays in L2 cache
_ZERO_IV = bytes(16)  # every CTR key is derived for one use only, so a fixed IV is safe
_ZEROS = bytes(CHUNK * 8)


def new_private_key() -> X25519PrivateKey:
    """A fresh X25519 private key (from the OS's cryptographically secure generator)."""
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The 32-byte raw public key of ``key``."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    """The 32-byte raw private key (what a party Shamir-shares)."""
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def private_from_bytes(data: bytes) -> X25519PrivateKey:
    """Inverse of ``private_bytes``."""
    return X25519PrivateKey.from_private_bytes(bytes(data))


def agree(key: X25519PrivateKey, peer_public: bytes) -> bytes:
    """The X25519 shared secret of ``key`` and a peer's 32-byte public key.

    Raises:
        PrivacyError: the peer's key is not a valid X25519 public key.
    """
    try:
        return key.exchange(X25519PublicKey.from_public_bytes(bytes(peer_public)))
    except ValueError as exc:
        raise PrivacyError(f"invalid X25519 public key from a peer: {exc}") from exc


def derive(secret: bytes, info: bytes, round: int) -> bytes:
    """A 32-byte key for one purpose and round: HKDF-SHA256(secret, info ‖ round)."""
    return HKDF(hashes.SHA256(), 32, salt=None, info=info + b"/" + str(round).encode()).derive(secret)


def keystream(key: bytes, size: int, dtype: type[np.unsignedinteger]) -> np.ndarray:
    """``size`` uniform ring elements: the AES-256-CTR keystream of ``key`` read as ``dtype``."""
    enc = Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor()
    nbytes = size * np.dtype(dtype).itemsize
    return np.frombuffer(enc.update(bytes(nbytes)), dtype=dtype).copy()


def add_stream(acc: np.ndarray, key: bytes, sign: int) -> None:
    """``acc ← acc + sign · keystream(key)`` in place (``sign`` is ±1).

    The same key and length always give the same stream, so a mask added by a party is removed
    exactly by the coordinator (or by the peer that shares the key, with the opposite sign).
    """
    add_streams(acc, [(key, sign)])


def add_streams(acc: np.ndarray, keyed: Sequence[tuple[bytes, int]]) -> None:
    """``acc ← acc + Σ sign · keystream(key)`` in place, block by block: each cache-sized block
    of ``acc`` takes every stream's next block before moving on, so ``acc`` crosses memory once
    instead of once per stream (41 masks of 1.66M elements: 1.3–1.6× faster than one at a time).

    A long ``acc`` is cut into one contiguous run of blocks per core, each run expanded by its own
    thread (OpenSSL's AES and numpy's adds release the GIL): a thread starts each stream at its
    run's offset by setting the CTR counter block to that offset, so the masks are bit-identical
    to a single pass over the keystream.
    """
    if not keyed or not acc.size:
        return
    threads.map_runs(lambda lo, hi: _add_run(acc, keyed, lo, hi), threads.runs(acc.size, CHUNK))


def _add_run(acc: np.ndarray, keyed: Sequence[tuple[bytes, int]], lo: int, hi: int) -> None:
    """``add_streams`` on ``acc[lo:hi]`` (``lo`` a multiple of ``CHUNK``): every stream read from
    its element ``lo`` on."""
    item = acc.dtype.itemsize
    counter = (lo * item // 16).to_bytes(16, "big")  # CTR's 128-bit big-endian block counter
    encs = [(Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor(), np.add if sign > 0 else np.subtract)
            for key, sign in keyed]
    buf = bytearray(CHUNK * item + 16)  # update_into wants len(data) + block size − 1 bytes
    zeros = memoryview(_ZEROS)
    for start in range(lo, hi, CHUNK):
        m = min(CHUNK, hi - start)
        part = acc[start : start + m]
        block = np.frombuffer(buf, dtype=acc.dtype, count=m)
        for enc, op in encs:
            enc.update_into(zeros[: m * item], buf)
            op(part, block, out=part)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM encryption: a fresh 12-byte nonce followed by the ciphertext and tag."""
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, data: bytes, associated: bytes) -> bytes:
    """Inverse of ``seal``.

    Raises:
        PrivacyError: the message was altered, misaddressed or encrypted under another key.
    """
    try:
        return AESGCM(key).decrypt(bytes(data[:12]), bytes(data[12:]), associated)
    except InvalidTag:
        raise PrivacyError("an encrypted share failed authentication (tampered, misrouted or wrong key)") from None
