"""The k-regular neighbour graph of SecAgg+.

Bell, Bonawitz, Gascón, Lepoint, Raykova, "Secure Single-Server Aggregation with (Poly)Logarithmic
Overhead", CCS 2020, Sec. 3: instead of masking with and sharing secrets among all n parties
(Bonawitz et al. 2017, O(n²) work), each party works only with its k neighbours in a random
Harary graph: the parties in a random order on a ring, each joined to the k/2 nearest on either
side. With k = O(log n) the sum is still correct under dropouts and private against the server
with high probability, at O(n log n) total cost.

The permutation is fixed by the run seed and the round (``graph_seed``): every party knows both
from the moment it joins, so each recomputes its own neighbourhood from the list of parties that
advertised keys and refuses a coordinator that names other neighbours. The graph is public.

Parameters fixed at join (``plan``): k from the planned parties per round and t from the threshold
fraction; against a coordinator that lies, t must exceed half of a neighbourhood (``is_safe``):
then no two different survivor sets can each be signed by t honest share holders.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np


def order_key(party_id: str) -> tuple[int, int | str]:
    """The total order on party ids that decides the sign of a pairwise mask (numeric ids first)."""
    return (0, int(party_id)) if party_id.isdigit() else (1, party_id)


def degree(requested: int | None, n: int) -> int:
    """The graph degree actually used: ``requested`` rounded up to even, at most ``n − 1``
    (``None``: the complete graph, i.e. the original SecAgg of Bonawitz et al.)."""
    if requested is None or requested >= n - 1:
        return n - 1
    return min(n - 1, requested + requested % 2)


def threshold(fraction: float, k: int) -> int:
    """Shares needed to rebuild a party's secrets: ``ceil(fraction · (k + 1))``, at least 2
    (each secret is shared among the party's k neighbours and itself)."""
    return min(k + 1, max(2, math.ceil(fraction * (k + 1) - 1e-9)))


def plan(fraction: float, neighbours: int | None, planned: int) -> tuple[int, int]:
    """``(k, t)`` fixed when a party joins: the degree for ``planned`` parties per round and the
    threshold over the k + 1 share holders (a round with fewer parties uses a smaller graph, never
    a smaller t)."""
    k = degree(neighbours, planned)
    return k, threshold(fraction, k)


def round_degree(k: int, n: int) -> int:
    """The degree used in a round of ``n`` parties: ``k``, or the complete graph when n ≤ k + 1."""
    return min(k, n - 1)


def is_safe(k: int, t: int) -> bool:
    """True when t is more than half of a neighbourhood of k + 1 share holders: then two views of who
    survived cannot both gather t signatures of honest holders (each signs one view), so a
    coordinator that lies cannot collect a party's seed shares and its key shares at once."""
    return 2 * t > k + 1


def graph_seed(run_seed: int, rnd: int) -> bytes:
    """The 32 bytes that fix round ``rnd``'s ring order: from the run seed the parties joined with."""
    from pollen.privacy.secagg.constants import GRAPH_SEED

    return hashlib.sha256(GRAPH_SEED + f"/{run_seed}/{rnd}".encode()).digest()


def harary(parties: Sequence[str], k: int, seed: bytes) -> dict[str, tuple[str, ...]]:
    """Each party's neighbours in the Harary graph H(k, n) over a random order of ``parties``.

    Args:
        parties: the ids (n of them).
        k: the degree (even, or n − 1 for the complete graph).
        seed: 32 bytes fixing the random order.
    """
    ids = sorted(parties, key=order_key)
    n = len(ids)
    if k >= n - 1:
        return {p: tuple(q for q in ids if q != p) for p in ids}
    rng = np.random.default_rng(np.random.SeedSequence(list(seed)))
    ring = [ids[i] for i in rng.permutation(n)]
    half = k // 2
    out: dict[str, tuple[str, ...]] = {}
    for pos, p in enumerate(ring):
        near = {ring[(pos + d) % n] for d in range(1, half + 1)} | {ring[(pos - d) % n] for d in range(1, half + 1)}
        out[p] = tuple(sorted(near, key=order_key))
    return out


def neighbours_of(parties: Sequence[str], k: int, seed: bytes, me: str) -> tuple[str, ...]:
    """``harary(parties, k, seed)[me]`` without building the whole graph (what one party computes)."""
    ids = sorted(parties, key=order_key)
    n = len(ids)
    if k >= n - 1:
        return tuple(q for q in ids if q != me)
    rng = np.random.default_rng(np.random.SeedSequence(list(seed)))
    ring = [ids[i] for i in rng.permutation(n)]
    pos, half = ring.index(me), k // 2
    near = {ring[(pos + d) % n] for d in range(1, half + 1)} | {ring[(pos - d) % n] for d in range(1, half + 1)}
    return tuple(sorted(near, key=order_key))


def failure_bound(n: int, k: int, t: int, dropped: int) -> float:
    """Union bound on the chance that a round cannot be unmasked when ``dropped`` of ``n``
    parties (chosen at random) drop after sharing their keys: some party then has fewer than
    ``t`` surviving share holders among itself and its ``k`` neighbours. Exact hypergeometric
    tails; use it to pick ``--secagg-neighbours`` (Bell et al. 2020, Sec. 4 choose k the same way).
    """
    if k >= n - 1:
        k = n - 1
    alive = n - dropped

    def below(population: int, good: int, draws: int, need: int) -> float:  # P(X < need)
        total = math.comb(population, draws)
        return sum(math.comb(good, x) * math.comb(population - good, draws - x)
                   for x in range(max(0, need)) if x <= good and draws - x <= population - good) / total

    lost = below(n - 1, alive, k, t) if dropped else 0.0  # a dropped party's key needs t survivors
    kept = below(n - 1, alive - 1, k, t - 1)  # a survivor's seed: itself + t − 1 surviving neighbours
    return min(1.0, dropped * lost + alive * kept)
