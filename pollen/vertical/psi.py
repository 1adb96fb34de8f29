"""Private set intersection by elliptic-curve Diffie-Hellman over ristretto255.

The protocol is the Diffie-Hellman PSI of Meadows ("A more efficient cryptographic matchmaking
protocol", IEEE S&P 1986) and Huberman, Franklin and Hogg ("Enhancing privacy and trust in
electronic communities", ACM EC 1999), in the group ristretto255 (RFC 9496): a prime-order group
of order ℓ = 2^252 + 27742317777372353535851937790883648493 built on Curve25519, whose encoding
has no cofactor, so every 32-byte string a party receives is either a group element or refused.
Ids are hashed into the group with RFC 9496's one-way map on 64 bytes of SHA-512 over a domain
tag, a fresh per-session salt and the id. Group operations are libsodium's (through ``rbcl``);
scalars come from libsodium's ``randombytes`` (the operating system's CSPRNG).

Two parties, the receiver R (the guest: it learns the intersection) and the sender S (a host)::

    S: k_S ← Z_ℓ random; π random permutation;  Y = [H(s‖y_π(j))^k_S]            → R
    R: k_R ← Z_ℓ random;                         X = [H(s‖x_i)^k_R]  (R's order) → S
    S:                                            X' = [X_i^k_S]      (same order) → R
    R: Z = [Y_j^k_R];  x_i is shared iff X'_i ∈ Z  (H(x)^(k_R k_S) = H(y)^(k_S k_R) ⟺ x = y)

Security (semi-honest parties, random oracle H, decisional Diffie-Hellman in ristretto255):
H(s‖y)^k_S for an id y that R does not hold is indistinguishable from a random group element, so
R learns of S's set only its size and the positions, in S's secret shuffle, of the common ids;
S sees only X, values H(s‖x)^k_R under R's key, and learns |X|. A dictionary attack (hashing
every candidate id) fails on both sides without the other's key. The salt makes the tags of one
session unlinkable to another's. After the last host, R tells each host the positions of the
final intersection in that host's shuffled list, in the aligned order: the common ids sorted
by their bytes, an order every party could compute from its own rows, so it reveals nothing and
makes runs reproducible. A host learns which of its own rows are common and the size, nothing
else. With more than one host R runs one exchange per host, so R also learns its overlap with
each host separately (docs/vertical.md says so). Neither side is protected against a party that
deviates (e.g. sends tags of ids it does not hold): this is the semi-honest model, as in FATE.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from pollen.errors import ProtocolError, require

GROUP = "ristretto255"
POINT_BYTES = 32
DOMAIN = b"pollen/vertical/psi/v1/ristretto255"
SALT_BYTES = 32


def _sodium():
    return require("rbcl", "vertical", "private set intersection (ristretto255 through libsodium)")


def new_salt() -> bytes:
    """A fresh per-session salt (32 bytes from the OS's CSPRNG)."""
    return secrets.token_bytes(SALT_BYTES)


def id_bytes(ids: Iterable[object]) -> list[bytes]:
    """Ids as bytes: ``bytes`` as they are, anything else as the UTF-8 of ``str(id)`` (so ``7``
    and ``"7"`` are the same id; every party must write its ids alike)."""
    return [i if isinstance(i, bytes) else str(i).encode() for i in ids]


def hash_to_group(ids: Sequence[bytes], salt: bytes) -> list[bytes]:
    """Each id's point H(salt‖id): RFC 9496's one-way map of SHA-512(domain, salt, id)."""
    if len(salt) != SALT_BYTES:
        raise ProtocolError(f"PSI salt must be {SALT_BYTES} bytes, got {len(salt)}")
    rb = _sodium()
    prefix = hashlib.sha512(DOMAIN)
    prefix.update(salt)
    out = []
    for i in ids:
        h = prefix.copy()
        h.update(len(i).to_bytes(8, "little"))
        h.update(i)
        out.append(rb.crypto_core_ristretto255_from_hash(h.digest()))
    return out


def to_array(points: Sequence[bytes]) -> np.ndarray:
    """Points as a ``(N, 32)`` uint8 array (what travels)."""
    return np.frombuffer(b"".join(points), dtype=np.uint8).reshape(len(points), POINT_BYTES).copy()


def from_array(arr: np.ndarray, what: str = "points") -> list[bytes]:
    """The points of a ``(N, 32)`` uint8 array.

    Raises:
        ProtocolError: another shape or dtype.
    """
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != POINT_BYTES:
        raise ProtocolError(f"{what}: expected a uint8 array of shape (N, {POINT_BYTES}), got {arr.dtype}{list(arr.shape)}")
    buf = np.ascontiguousarray(arr).tobytes()
    return [buf[i : i + POINT_BYTES] for i in range(0, len(buf), POINT_BYTES)]


class PsiKey:
    """A party's secret exponent for one session (never leaves the party).

    Args:
        threads: threads for the exponentiations (libsodium runs without Python's lock).
    """

    def __init__(self, threads: int = 1) -> None:
        self._rb = _sodium()
        self._k = self._rb.crypto_core_ristretto255_scalar_random()  # libsodium randombytes: the OS's CSPRNG
        self.threads = max(1, threads)

    def blind(self, points: Sequence[bytes], what: str = "points") -> list[bytes]:
        """``[p^k for p in points]``.

        Raises:
            ProtocolError: a value that is not a ristretto255 element (what a peer sent is checked here).
        """
        mult = self._rb.crypto_scalarmult_ristretto255
        k = self._k

        def run(chunk: Sequence[bytes]) -> list[bytes]:
            try:
                return [mult(k, p) for p in chunk]
            except (RuntimeError, ValueError, TypeError):
                raise ProtocolError(f"{what}: a value is not a valid {GROUP} element (or the identity)") from None

        if self.threads == 1 or len(points) < 2048:
            return run(points)
        size = -(-len(points) // self.threads)
        with ThreadPoolExecutor(self.threads) as pool:
            parts = list(pool.map(run, [points[i : i + size] for i in range(0, len(points), size)]))
        return [p for part in parts for p in part]


# ------------------------------------------------------------ the two roles
@dataclass
class PsiSender:
    """A host's side of one exchange: its shuffled, blinded ids, then re-blinding the guest's.

    Args:
        ids: the host's ids, in its row order.
        salt: the session's salt.
        threads: threads for the exponentiations.
    """

    ids: Sequence[bytes]
    salt: bytes
    threads: int = 1
    key: PsiKey = field(init=False)
    order: np.ndarray = field(init=False)  # order[j] = the row of the j-th id sent

    def __post_init__(self) -> None:
        self.key = PsiKey(self.threads)
        self.order = _secure_permutation(len(self.ids))

    def blinded_ids(self) -> np.ndarray:
        """Y: the host's ids hashed and blinded, in a secret random order."""
        points = hash_to_group([self.ids[i] for i in self.order], self.salt)
        return to_array(self.key.blind(points))

    def reblind(self, guest_points: np.ndarray) -> np.ndarray:
        """X': the guest's blinded ids raised to this host's key, in the guest's order."""
        return to_array(self.key.blind(from_array(guest_points, "guest's blinded ids"), "guest's blinded ids"))

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """This host's rows of the intersection, in the aligned order, from their positions in Y.

        Raises:
            ProtocolError: positions outside Y or repeated.
        """
        pos = np.asarray(positions)
        if pos.ndim != 1 or (pos.size and (pos.min() < 0 or pos.max() >= len(self.order))) or len(np.unique(pos)) != pos.size:
            raise ProtocolError(f"alignment: expected distinct positions in [0, {len(self.order)}), got {pos.size} values")
        return self.order[pos.astype(np.int64)]


@dataclass
class PsiReceiver:
    """The guest's side: its blinded ids, then the match against each host.

    Args:
        ids: the guest's ids, in its row order.
        salt: the session's salt.
        threads: threads for the exponentiations.
    """

    ids: Sequence[bytes]
    salt: bytes
    threads: int = 1
    matches: dict[str, dict[int, int]] = field(default_factory=dict)  # host -> {guest row: position in host's Y}
    _keys: dict[str, PsiKey] = field(default_factory=dict)

    def blinded_ids(self, host: str) -> np.ndarray:
        """X for ``host`` (a fresh key per host: the exchanges cannot be linked to each other)."""
        key = self._keys[host] = PsiKey(self.threads)
        return to_array(key.blind(hash_to_group(self.ids, self.salt)))

    def match(self, host: str, host_points: np.ndarray, reblinded: np.ndarray) -> int:
        """Compare X' (the guest's ids under both keys) with Y^k_R; returns the overlap with ``host``.

        Raises:
            ProtocolError: X' of another length than the guest's ids, or values not in the group.
        """
        key = self._keys.pop(host)
        mine = from_array(reblinded, "re-blinded ids")
        if len(mine) != len(self.ids):
            raise ProtocolError(f"host {host} returned {len(mine)} re-blinded ids for the guest's {len(self.ids)}")
        theirs = key.blind(from_array(host_points, "host's blinded ids"), "host's blinded ids")
        where = {t: j for j, t in enumerate(theirs)}
        self.matches[host] = {i: where[t] for i, t in enumerate(mine) if t in where}
        return len(self.matches[host])

    def align(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The final intersection over every host: the guest's rows in the aligned order (the
        common ids sorted by their bytes) and, per host, the positions in its Y of the same ids."""
        common = set.intersection(*(set(m) for m in self.matches.values())) if self.matches else set()
        rows = np.asarray(sorted(common, key=lambda i: self.ids[i]), dtype=np.int64)
        return rows, {h: np.asarray([m[int(r)] for r in rows], dtype=np.int64) for h, m in self.matches.items()}


def _secure_permutation(n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` drawn from the OS's CSPRNG (Fisher-Yates)."""
    rng = secrets.SystemRandom()
    perm = list(range(n))
    rng.shuffle(perm)
    return np.asarray(perm, dtype=np.int64)


def intersect(guest_ids: Sequence[object], host_ids: dict[str, Sequence[object]], threads: int = 1
              ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run the whole protocol in this process (tests, benchmarks): the guest's rows and each
    host's rows of the intersection, all in the same aligned order."""
    salt = new_salt()
    receiver = PsiReceiver(id_bytes(guest_ids), salt, threads)
    senders = {h: PsiSender(id_bytes(ids), salt, threads) for h, ids in host_ids.items()}
    for h, s in senders.items():
        y = s.blinded_ids()
        x = receiver.blinded_ids(h)
        receiver.match(h, y, s.reblind(x))
    rows, positions = receiver.align()
    return rows, {h: senders[h].rows(p) for h, p in positions.items()}
