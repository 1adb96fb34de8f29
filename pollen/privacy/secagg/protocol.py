"""The coordinator side of SecAgg+: route keys, encrypted shares and signatures, sum masked
updates, rebuild the masks of survivors and of dropped parties from Shamir shares, and recover
only the sum.

Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead" (CCS), on
Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving Machine Learning" (CCS),
with the latter's active-adversary additions (Sec. 6): signed round keys and a consistency round.

Threat model (docs/secure-aggregation.md): a coordinator that may lie — about who dropped out, the
threshold, the graph, the keys it relays — together with fewer than ``2t − (k + 1)`` colluding
parties in any party's neighbourhood (fewer than ``t`` if the coordinator follows the protocol).
The parties check everything a lying coordinator could abuse (``party.py``); this module is the
honest coordinator's side. What it sees: public keys and signatures, example counts, ciphertexts
it cannot open, masked vectors uniform in Z_{2^bits}, and shares that rebuild survivors' self-mask
seeds and dropped parties' mask keys — never both for one party. The sum of the included updates
is all it can compute.

Every stage goes through the transport's ``submit``/``poll`` (the coordinator's ``collect``), so
the protocol runs unchanged over the in-process, process-pool and gRPC transports.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field as dc_field
from typing import Any

import numpy as np

from pollen.errors import RunError
from pollen.privacy.he import Layout
from pollen.privacy.secagg import constants as C
from pollen.privacy.secagg import field, masks, shamir
from pollen.privacy.secagg.graph import graph_seed, harary, order_key, plan, round_degree
from pollen.privacy.secagg.identity import fingerprint, keys_message
from pollen.serialization import reply_to_bytes, task_to_bytes
from pollen.types import Reply, RoundConfig, Task, Update


@dataclass(frozen=True)
class SecAggParams:
    """Protocol parameters (``--secagg-*`` flags).

    Attributes:
        threshold: fraction of a party's share holders (neighbours + itself) that rebuild its secrets;
            above 0.5 unless ``trust_coordinator`` (see ``graph.is_safe``).
        neighbours: degree k of the neighbour graph (None: all parties, as the original SecAgg).
        planned: parties per round the run plans (fixes k and t when a party joins; None: each
            round's own count, which a lying coordinator could shrink — tests only).
        trust_coordinator: accept t ≤ half a neighbourhood: secure against a coordinator that follows
            the protocol only.
        bits: the ring Z_{2^bits} (32 or 64).
        clip: coordinate range ``[−clip, clip]`` of the quantiser.
        weighted: weight each update by its example count (FedAvg) instead of uniformly.
        dropout: simulation: fraction of each round's parties that drop after masking.
        timeout: seconds each stage waits for replies (None: wait for all).
        seed: the run seed: fixes each round's graph (``graph.graph_seed``) and the simulated dropouts.
    """

    threshold: float = 2 / 3
    neighbours: int | None = None
    planned: int | None = None
    trust_coordinator: bool = False
    bits: int = 32
    clip: float = 1.0
    weighted: bool = True
    dropout: float = 0.0
    timeout: float | None = None
    seed: int = 0


@dataclass
class SecureSum:
    """The outcome of one round of the protocol."""

    update: Update  # the weighted mean of the included updates, as one update
    included: list[str]
    dropped: dict[str, list[str]]  # stage -> parties lost there
    spec: field.FieldSpec
    k: int
    t: int
    bytes_up: int  # stages 2–4 (the round loop counts stage 1, the fit replies, itself)
    bytes_down: int
    seconds_unmask: float
    clipped: float = 0.0


@dataclass
class _Round:
    """The coordinator's view of one round (public keys, graph, who is still in)."""

    round: int
    keys: dict[str, dict[str, np.ndarray]]  # party -> {"enc", "mask", "id", "sig"} as advertised
    roster: dict[str, str]  # party -> fingerprint of its round keys (U1)
    examples: dict[str, int]
    graph: dict[str, tuple[str, ...]]
    t: int
    base: RoundConfig
    drop: Mapping[str, set[str]]
    bytes_up: int = 0
    bytes_down: int = 0
    dropped: dict[str, list[str]] = dc_field(default_factory=dict)


def run(updates: Sequence[Update], parties: Sequence[str], rnd: int, transport: Any, params: SecAggParams,
        drop: Mapping[str, set[str]] | None = None, noise: Any = None) -> SecureSum:
    """Stages 2–5 after the advertise replies ``updates`` of ``parties``; the mean as one update.

    Args:
        drop: simulation/tests: stage -> parties told to drop out after doing that stage's work.
        noise: distributed Skellam noise (``std`` of the summed noise in real units, ``per_round``
            planned parties, ``account(scale, parties, dim)``): each party adds its share of
            integer noise after quantising, and the released sum is accounted.

    Raises:
        RunError: fewer than 2 parties, or too many dropouts to rebuild a needed secret.
    """
    layout = _check_advertised(updates, parties, rnd)
    keys = {p: {"enc": u.delta[C.ENC_PK], "mask": u.delta[C.MASK_PK], "id": u.delta[C.IDENTITY],
                "sig": u.delta[C.KEYS_SIG]} for p, u in zip(parties, updates)}
    bad = [p for p in parties if not _self_signed(p, rnd, keys[p])]  # a party's bad keys must not fail its neighbours
    u1 = [p for p in parties if p not in set(bad)]
    if len(u1) < 2:
        raise RunError(f"round {rnd}: secure aggregation needs at least 2 parties; {len(u1)} advertised valid keys")
    k_fixed, t = plan(params.threshold, params.neighbours, params.planned or len(u1))
    k = round_degree(k_fixed, len(u1))
    if k + 1 < t:
        raise RunError(f"round {rnd}: {len(u1)} parties advertised keys, fewer than the threshold t = {t} that every "
                       "party fixed when it joined; more parties must take part (or lower --secagg-threshold)")
    examples = {p: int(u.num_examples) for p, u in zip(parties, updates)}
    st = _Round(rnd, keys, {p: fingerprint(keys[p]["enc"].tobytes(), keys[p]["mask"].tobytes()) for p in u1},
                examples, harary(u1, k, graph_seed(params.seed, rnd)), t, RoundConfig(round=rnd), dict(drop or {}))
    if bad:
        st.dropped[C.STAGE_ADVERTISE] = bad
    cts = _share_keys(transport, st, u1, params.timeout)
    u2 = sorted({s for s, _ in cts}, key=order_key)
    weights = {p: st.examples[p] if params.weighted else 1 for p in u2}
    total_weight = max(1, sum(weights.values()))
    if noise is None:
        spec, variance = field.choose(params.bits, params.clip, total_weight), 0.0
    else:
        spec = field.choose_with_noise(params.bits, noise.coordinate_clip(params.clip), total_weight, noise.std)
        variance = (spec.scale * noise.std) ** 2 / noise.per_round  # each party's share, integer units
    acc, u3, clipped = _masked_input(transport, st, u2, cts, spec, weights, params, layout.size, variance)
    t0 = time.perf_counter()
    sigs = _consistency(transport, st, u3, params.timeout)
    seeds, sks = _unmask(transport, st, u2, u3, sigs, params.timeout)
    _remove_masks(acc, st, u2, u3, seeds, sks)
    total = field.dequantize(acc, spec, field.integer_segments(layout.shapes, layout.dtypes))
    seconds = time.perf_counter() - t0
    if noise is not None:
        exact = field.integer_segments(layout.shapes, layout.dtypes)
        noise.account(spec.scale, len(u3), layout.size - sum(b - a for a, b in exact))
    w3 = sum(weights[p] for p in u3)
    metrics = _mean_metrics([u for p, u in zip(parties, updates) if p in set(u3)])
    update = Update(layout.unflatten(total / w3), sum(st.examples[p] for p in u3), metrics, {})
    return SecureSum(update, u3, st.dropped, spec, k, st.t, st.bytes_up, st.bytes_down, seconds, clipped)


def _check_advertised(updates: Sequence[Update], parties: Sequence[str], rnd: int) -> Layout:
    layouts = set()
    for p, u in zip(parties, updates):
        meta = u.codec.get(C.CODEC, {})
        if meta.get("stage") != C.STAGE_ADVERTISE or any(n not in u.delta for n in (C.ENC_PK, C.MASK_PK, C.IDENTITY,
                                                                                       C.KEYS_SIG)):
            raise RunError(f"round {rnd}: party {p} did not advertise secure-aggregation keys; every party "
                           "must run with --secagg (and the same Pollen version)")
        layouts.add(json.dumps(meta["layout"], sort_keys=True))
    if len(layouts) != 1:
        raise RunError(f"round {rnd}: parties advertised {len(layouts)} different model layouts")
    return Layout.from_dict(json.loads(layouts.pop()))


def _self_signed(party: str, rnd: int, keys: Mapping[str, np.ndarray]) -> bool:
    """Whether a party's round keys carry a valid signature of the key its credential names (its
    neighbours also check that they trust that key; the coordinator only keeps out garbage)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    cred = keys["id"].tobytes()
    try:
        key = Ed25519PublicKey.from_public_bytes(cred) if len(cred) == 32 else x509.load_der_x509_certificate(cred).public_key()
        key.verify(keys["sig"].tobytes(), keys_message(rnd, party, keys["enc"].tobytes(), keys["mask"].tobytes()))
    except (ValueError, TypeError, AttributeError, InvalidSignature):
        return False
    return True


def _stage(transport: Any, st: _Round, stage: str, payloads: Mapping[str, tuple[dict, dict]],
           timeout: float | None, keep: Callable[[Reply], None]) -> list[str]:
    """Send one stage's tasks, hand each good reply to ``keep``; the parties that answered."""
    from pollen.server.coordinator import collect  # the round loop's own collector

    tasks = []
    for p, (arrays, extra) in payloads.items():
        extra = {**extra, C.DROP: sorted(st.drop.get(stage, ()))}
        tasks.append(Task(p, stage, st.round, arrays, st.base.with_(extra={C.EXTRA: extra})))
        st.bytes_down += len(task_to_bytes(tasks[-1]))  # exact wire size (small messages)
    replies, late = collect(transport, tasks, timeout)
    ok = []
    for r in replies:
        if r.ok and r.kind == stage and r.update is not None:
            st.bytes_up += r.bytes_up or len(reply_to_bytes(r))  # as the round loop counts fit replies
            keep(r)
            ok.append(r.party_id)
    lost = sorted(set(payloads) - set(ok), key=order_key)
    if lost:
        st.dropped[stage] = lost
    return ok


def _share_keys(transport: Any, st: _Round, u1: list[str], timeout: float | None) -> dict[tuple[str, str], np.ndarray]:
    """Stage 2: each party gets its neighbours' signed public keys and the round's list of parties;
    returns (sender, recipient) -> ciphertext."""
    payloads = {}
    for p in u1:
        arrays = {f"{C.PK_PREFIX}{j}/{x}": st.keys[j][x] for j in st.graph[p] for x in ("enc", "mask", "id", "sig")}
        payloads[p] = (arrays, {C.NEIGHBOURS: list(st.graph[p]), C.THRESHOLD: st.t, C.ROSTER: st.roster})
    cts: dict[tuple[str, str], np.ndarray] = {}

    def keep(r: Reply) -> None:
        for name, ct in r.update.delta.items():
            if name.startswith(C.CT_PREFIX) and name[len(C.CT_PREFIX):] in st.graph[r.party_id]:
                cts[(r.party_id, name[len(C.CT_PREFIX):])] = ct

    _stage(transport, st, C.STAGE_SHARE_KEYS, payloads, timeout, keep)
    return cts


def _masked_input(transport: Any, st: _Round, u2: list[str], cts: Mapping[tuple[str, str], np.ndarray],
                  spec: field.FieldSpec, weights: Mapping[str, int], params: SecAggParams,
                  size: int, noise_variance: float = 0.0) -> tuple[np.ndarray, list[str], float]:
    """Stage 3: route shares, sum the masked updates as they arrive (none is kept)."""
    if params.dropout > 0:  # simulation: parties that drop after masking, chosen reproducibly
        rng = np.random.default_rng([params.seed, st.round, 3])
        chosen = rng.choice(len(u2), int(round(params.dropout * len(u2))), replace=False)
        st.drop = {**st.drop, C.STAGE_MASKED_INPUT: set(st.drop.get(C.STAGE_MASKED_INPUT, ())) | {u2[i] for i in chosen}}
    in2 = set(u2)
    payloads = {}
    for p in u2:
        peers = [j for j in st.graph[p] if j in in2]
        arrays = {C.CT_PREFIX + j: cts[(j, p)] for j in peers}
        payloads[p] = (arrays, {C.SURVIVORS: peers, C.FIELD: spec.to_dict(), "weight": int(weights[p]),
                                C.NOISE_VARIANCE: noise_variance})
    acc = np.zeros(size, dtype=spec.dtype)
    clipped: list[float] = []

    def keep(r: Reply) -> None:
        y = r.update.delta.get(C.MASKED)
        if y is None or y.dtype != field.SIGNED[spec.bits] or y.shape != (size,):
            raise RunError(f"round {st.round}: party {r.party_id} sent a masked update of the wrong type or size")
        np.add(acc, y.view(spec.dtype), out=acc)  # the same bits read as Z_{2^bits}; sums wrap
        clipped.append(float(r.update.metrics.get("secagg_clipped", 0.0)))

    u3 = sorted(_stage(transport, st, C.STAGE_MASKED_INPUT, payloads, params.timeout, keep), key=order_key)
    if not u3:
        raise RunError(f"round {st.round}: no masked update arrived")
    return acc, u3, float(np.mean(clipped))


def _consistency(transport: Any, st: _Round, u3: list[str], timeout: float | None) -> dict[str, np.ndarray]:
    """Stage 4: every survivor signs the survivor set U3; returns party -> its signature."""
    sigs: dict[str, np.ndarray] = {}

    def keep(r: Reply) -> None:
        sig = r.update.delta.get(C.SURVIVORS_SIG)
        if sig is not None and sig.dtype == np.uint8 and sig.shape == (64,):
            sigs[r.party_id] = sig

    _stage(transport, st, C.STAGE_CONSISTENCY, {p: ({}, {C.SURVIVORS: u3}) for p in u3}, timeout, keep)
    return sigs


def _unmask(transport: Any, st: _Round, u2: list[str], u3: list[str], sigs: Mapping[str, np.ndarray],
            timeout: float | None) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Stage 5: relay the survivor-set signatures, collect shares; rebuild survivors' seeds and
    dropped parties' mask keys."""
    in3, gone = set(u3), [p for p in u2 if p not in set(u3)]
    payloads = {p: ({C.SIG_PREFIX + j: sigs[j] for j in st.graph[p] if j in sigs}, {}) for p in u3 if p in sigs}
    seed_shares: dict[str, list[bytes]] = {}
    key_shares: dict[str, list[bytes]] = {}

    def keep(r: Reply) -> None:
        for name, arr in r.update.delta.items():
            for prefix, into in ((C.SEED_SHARE_PREFIX, seed_shares), (C.KEY_SHARE_PREFIX, key_shares)):
                if name.startswith(prefix):
                    into.setdefault(name[len(prefix):], []).append(arr.tobytes())

    _stage(transport, st, C.STAGE_UNMASK, payloads, timeout, keep)
    seeds = {p: _rebuild(seed_shares.get(p, []), st, p, "self-mask seed") for p in u3}
    needed = [j for j in gone if any(i in in3 for i in st.graph[j])]
    sks = {j: _rebuild(key_shares.get(j, []), st, j, "mask key") for j in needed}
    for j, sk in sks.items():
        if masks.public_bytes(masks.private_from_bytes(sk)) != st.keys[j]["mask"].tobytes():
            raise RunError(f"round {st.round}: the mask key rebuilt for party {j} does not match its public key")
    return seeds, sks


def _rebuild(shares: list[bytes], st: _Round, party: str, what: str) -> bytes:
    if len(shares) < st.t:
        raise RunError(f"round {st.round}: only {len(shares)} shares of party {party}'s {what} came back, "
                       f"threshold {st.t}: too many dropouts (or parties refused to unmask; see their failures); "
                       "raise --secagg-neighbours")
    return shamir.reconstruct(shares[: st.t])


def _remove_masks(acc: np.ndarray, st: _Round, u2: list[str], u3: list[str],
                  seeds: Mapping[str, bytes], sks: Mapping[str, bytes]) -> None:
    """Subtract survivors' self masks and the pairwise masks survivors shared with dropped parties."""
    keyed = [(masks.derive(seeds[p], C.INFO_SELF, st.round), -1) for p in u3]
    in3 = set(u3)
    for j, sk in sks.items():
        key = masks.private_from_bytes(sk)
        for i in st.graph[j]:
            if i in in3:
                pair = masks.derive(masks.agree(key, st.keys[i]["mask"].tobytes()), C.INFO_PAIR, st.round)
                keyed.append((pair, -1 if order_key(i) < order_key(j) else +1))
    masks.add_streams(acc, keyed)


def _mean_metrics(updates: Sequence[Update]) -> dict[str, float]:
    from pollen.server.coordinator import mean_metrics

    return mean_metrics(updates)
