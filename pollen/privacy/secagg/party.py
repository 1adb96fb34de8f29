"""The party side of SecAgg+: one function per protocol stage (see ``constants.py``), each
checking what a coordinator that lies could abuse before it answers.

A party's secrets for the current round live in ``LocalParty.state["secagg"]`` and never leave
it: the update in the clear, both X25519 private keys, the self-mask seed, and the shares other
parties sent it. What it sends: public keys signed with its identity key, shares encrypted to
their recipients, the masked update, its signature of the survivor set, and — once — for each
neighbour either a self-mask-seed share or a mask-key share, never both.

What it refuses (Bonawitz et al. 2017, Sec. 6, the active-adversary checks; Bell et al. 2020,
the neighbour graph): parameters other than those it fixed when it joined (t, k, and so its
neighbours), t not above half of its neighbourhood (unless its own config accepts the risk), a
neighbour's keys without that neighbour's valid signature, fewer than t of its share holders left
at any stage, a survivor set that fewer than t of its share holders signed as it did, and any
stage asked twice or out of order. A refusal ends its part in the round.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from pollen.client.party import party_index
from pollen.errors import PrivacyError
from pollen.privacy.he import Layout
from pollen.privacy.secagg import constants as C
from pollen.privacy.secagg import field, masks, shamir
from pollen.privacy.secagg.graph import graph_seed, is_safe, neighbours_of, order_key, plan, round_degree
from pollen.privacy.secagg.identity import Trust, fingerprint, keys_message, survivors_message
from pollen.transforms.base import StepContext
from pollen.types import Reply, Task, Update

log = logging.getLogger("pollen.party")

def as_array(data: bytes) -> np.ndarray:
    """Bytes as a uint8 vector (how keys, ciphertexts and shares travel)."""
    return np.frombuffer(data, dtype=np.uint8).copy()


def address(sender: str, recipient: str, round: int) -> bytes:
    """The associated data binding an encrypted share to its sender, recipient and round."""
    return f"{sender}>{recipient}@{round}".encode()


def trust_of(party_state: dict[str, Any]) -> Trust:
    """The party's identity and pinned peers (a fresh pinned identity when the runtime set none)."""
    trust = party_state.get(C.TRUST)
    if trust is None:
        trust = party_state[C.TRUST] = Trust.pinned()
    return trust


def identity_for(party: Any, certs_dir: str | None, folder: Any) -> None:
    """Give a deployed party its signing identity: the CA-certified one in ``certs_dir`` when
    ``pollen certs`` made one, else a key pinned by its peers, kept in ``folder`` across restarts.

    Raises:
        PrivacyError: credentials that are there but unusable.
    """
    trust = Trust.certified(certs_dir, party.party_id) if certs_dir else None
    if trust is None:
        log.warning("party %s: no CA-certified signing key (party-%s.sign.pem in --certs-dir); secure aggregation "
                    "trusts its peers' signing keys on first use, which a coordinator that lies from the first round "
                    "can defeat (docs/secure-aggregation.md)", party.party_id, party.party_id)
        trust = Trust.pinned_in(folder)
    party.state[C.TRUST] = trust


def advertise(update: Update, ctx: StepContext, params: Any) -> Update:
    """Stage 1, run as the last pipeline step of ``fit``: keep the update, send two public keys
    signed with this party's identity key.

    Args:
        params: this party's own ``SecAggParams`` (from the config it joined with).

    Raises:
        PrivacyError: a compressed update (masks need the plain values), a second advertisement for
            a round, an unsafe threshold, or a simulated dropout.
    """
    me, rnd = ctx.party_id, ctx.round
    if update.codec:
        raise PrivacyError(f"party {me}: secure aggregation cannot mask a compressed update "
                           f"(codec {sorted(update.codec)}); turn compression off with --secagg")
    last = ctx.party_state.get(C.LAST_ROUND)
    if last is not None and rnd <= last:
        raise PrivacyError(f"party {me}: asked for round {rnd}'s keys after round {last}'s; a party takes part in "
                           "each round's secure sum once")
    if params.planned is not None:
        _check_safe(me, *plan(params.threshold, params.neighbours, params.planned), params)
    trust = trust_of(ctx.party_state)
    enc_key, mask_key = masks.new_private_key(), masks.new_private_key()
    enc_pk, mask_pk = masks.public_bytes(enc_key), masks.public_bytes(mask_key)
    layout = Layout.of(update.delta)
    ctx.party_state[C.LAST_ROUND] = rnd
    ctx.party_state[C.STATE] = {
        "round": rnd, "stage": C.STAGE_ADVERTISE, "params": params, "enc_key": enc_key, "mask_key": mask_key,
        "seed": os.urandom(32),  # self-mask seed, from the OS's secure generator
        "fingerprint": fingerprint(enc_pk, mask_pk), "delta": update.delta, "layout": layout,
        "num_examples": int(update.num_examples), "shares": {},
    }
    _maybe_drop(me, ctx.extra.get(C.EXTRA, {}), C.STAGE_ADVERTISE)
    delta = {C.ENC_PK: as_array(enc_pk), C.MASK_PK: as_array(mask_pk), C.IDENTITY: as_array(trust.credential),
             C.KEYS_SIG: as_array(trust.sign(keys_message(rnd, me, enc_pk, mask_pk)))}
    return Update(delta=delta, num_examples=update.num_examples, metrics=update.metrics,
                  codec={C.CODEC: {"stage": C.STAGE_ADVERTISE, "layout": layout.to_dict()}})


def _stage(after: str) -> Callable[[Callable[..., Reply]], Callable[[Any, Task], Reply]]:
    """A stage handler that runs only right after stage ``after`` of the same round; any refusal
    inside it ends this party's part in the round (its session and secrets are dropped)."""

    def wrap(fn: Callable[..., Reply]) -> Callable[[Any, Task], Reply]:
        @functools.wraps(fn)
        def handler(party: Any, task: Task) -> Reply:
            sess = party.state.get(C.STATE)
            if sess is None or sess["round"] != task.round or sess["stage"] != after:
                raise PrivacyError(f"party {party.party_id}: {task.kind} in round {task.round} is not the stage that "
                                   "follows what it answered (a stage skipped, repeated or replayed); refusing")
            try:
                return fn(party, task, sess, task.config.extra[C.EXTRA])
            except (PrivacyError, KeyError, ValueError, TypeError) as exc:
                party.state.pop(C.STATE, None)
                if isinstance(exc, PrivacyError):
                    raise
                raise PrivacyError(f"party {party.party_id}: malformed {task.kind} message ({type(exc).__name__}: {exc})") from None

        return handler

    return wrap


@_stage(after=C.STAGE_ADVERTISE)
def share_keys(party: Any, task: Task, sess: dict[str, Any], payload: Mapping[str, Any]) -> Reply:
    """Stage 2: check the round's parameters and the neighbours' signed keys, then Shamir-share the
    self-mask seed and the mask key among the neighbours and this party (t of them rebuild either),
    each neighbour's pair encrypted to it with AES-GCM."""
    me, rnd, params = party.party_id, task.round, sess["params"]
    roster = {str(p): str(fp) for p, fp in payload[C.ROSTER].items()}
    if roster.get(me) != sess["fingerprint"]:
        raise PrivacyError(f"party {me}: the coordinator's list of this round's parties misstates this party's keys")
    k, t = plan(params.threshold, params.neighbours, params.planned or len(roster))
    _check_safe(me, k, t, params)
    if int(payload[C.THRESHOLD]) != t:
        raise PrivacyError(f"party {me}: the coordinator asks for threshold t = {payload[C.THRESHOLD]}; this party fixed "
                           f"t = {t} (of its k + 1 = {k + 1} share holders) when it joined; refusing")
    neighbours = list(neighbours_of(list(roster), round_degree(k, len(roster)), graph_seed(params.seed, rnd), me))
    if sorted(map(str, payload[C.NEIGHBOURS]), key=order_key) != neighbours:
        raise PrivacyError(f"party {me}: the coordinator names neighbours {list(payload[C.NEIGHBOURS])[:8]}, not the "
                           f"{len(neighbours)} the round's graph gives; refusing")
    if len(neighbours) + 1 < t:
        raise PrivacyError(f"party {me}: {len(neighbours)} neighbours + itself < t = {t} share holders; refusing")
    trust = trust_of(party.state)
    pks = {}
    for j in neighbours:
        enc, mask, cred, sig = (_bytes(task.state, f"{C.PK_PREFIX}{j}/{x}") for x in ("enc", "mask", "id", "sig"))
        trust.verify(j, cred, sig, keys_message(rnd, j, enc, mask))  # not the coordinator's own keys in between
        if fingerprint(enc, mask) != roster[j]:
            raise PrivacyError(f"party {me}: neighbour {j}'s keys differ from the round's list of parties; refusing")
        pks[j] = (enc, mask, cred)
    holders = sorted([me, *neighbours], key=order_key)
    seed_shares = shamir.split(sess["seed"], t, len(holders))
    key_shares = shamir.split(masks.private_bytes(sess["mask_key"]), t, len(holders))
    out, box_keys = {}, {}
    for holder, s_seed, s_key in zip(holders, seed_shares, key_shares):
        if holder == me:
            sess["shares"][me] = (s_seed, s_key)
            continue
        key = box_keys[holder] = masks.derive(masks.agree(sess["enc_key"], pks[holder][0]), C.INFO_SHARE, rnd)
        out[C.CT_PREFIX + holder] = as_array(masks.seal(key, s_seed + s_key, address(me, holder, rnd)))
    sess.update(stage=C.STAGE_SHARE_KEYS, neighbours=neighbours, pks=pks, threshold=t, roster=roster,
                box_keys=box_keys)  # the same pairwise key opens the neighbour's shares in stage 3
    _maybe_drop(me, payload, C.STAGE_SHARE_KEYS)
    return Reply(me, C.STAGE_SHARE_KEYS, rnd, update=Update(out, 0, codec={C.CODEC: {"stage": C.STAGE_SHARE_KEYS}}))


@_stage(after=C.STAGE_SHARE_KEYS)
def masked_input(party: Any, task: Task, sess: dict[str, Any], payload: Mapping[str, Any]) -> Reply:
    """Stage 3: store the shares addressed to this party, then send
    ``y = w·q(Δ) + PRG(seed) + Σ_{j<me} PRG(s_ij) − Σ_{j>me} PRG(s_ij)`` in Z_{2^bits} over the
    neighbours that completed stage 2 — if at least t − 1 of them remain (t share holders)."""
    me, rnd, t = party.party_id, task.round, sess["threshold"]
    peers = sorted({str(j) for j in payload[C.SURVIVORS]}, key=order_key)
    unknown = sorted(set(peers) - set(sess["neighbours"]))
    if unknown:
        raise PrivacyError(f"party {me}: asked to mask with {unknown}, which are not its neighbours")
    if len(peers) + 1 < t:
        raise PrivacyError(f"party {me}: only {len(peers)} of its neighbours remain, fewer than t − 1 = {t - 1}: its "
                           "masked update could be unmasked alone; refusing")
    for j in peers:
        name = C.CT_PREFIX + j
        if name not in task.state:
            raise PrivacyError(f"party {me}: no encrypted shares from neighbour {j} in round {rnd}")
        plain = masks.open_sealed(sess["box_keys"][j], task.state[name].tobytes(), address(j, me, rnd))
        sess["shares"][j] = (plain[: shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES :])
    spec = field.FieldSpec.from_dict(payload[C.FIELD])
    rng = np.random.default_rng([party.seed, party_index(me), rnd, 0x5EC])  # rounding only
    layout = sess["layout"]
    exact = field.integer_segments(layout.shapes, layout.dtypes)
    y, clipped = field.quantize(_flat(layout, sess.pop("delta")), spec, int(payload["weight"]), rng, exact)
    variance = float(payload.get(C.NOISE_VARIANCE, 0.0))
    if variance > 0:  # distributed DP: this party's share of integer Skellam noise, inside the ring
        from pollen.privacy.client_dp import secure_rng
        from pollen.privacy.skellam import add_integer_noise

        add_integer_noise(y, variance, secure_rng(), exact)
    keyed = [(masks.derive(sess["seed"], C.INFO_SELF, rnd), +1)]
    for j in peers:
        pair = masks.derive(masks.agree(sess["mask_key"], sess["pks"][j][1]), C.INFO_PAIR, rnd)
        keyed.append((pair, +1 if order_key(me) < order_key(j) else -1))
    masks.add_streams(y, keyed)
    sess.update(stage=C.STAGE_MASKED_INPUT, masked_with=peers)
    _maybe_drop(me, payload, C.STAGE_MASKED_INPUT)
    wire = y.view(field.SIGNED[spec.bits])  # same bits; transports accept signed integer tensors
    update = Update({C.MASKED: wire}, sess["num_examples"], metrics={"secagg_clipped": clipped},
                    codec={C.CODEC: {"stage": C.STAGE_MASKED_INPUT}})
    return Reply(me, C.STAGE_MASKED_INPUT, rnd, update=update)


@_stage(after=C.STAGE_MASKED_INPUT)
def consistency(party: Any, task: Task, sess: dict[str, Any], payload: Mapping[str, Any]) -> Reply:
    """Stage 4: check and sign the set U3 of parties whose masked updates arrived. The signature
    commits this party to one view of who survived; it answers once."""
    me, rnd, t = party.party_id, task.round, sess["threshold"]
    u3 = sorted({str(j) for j in payload[C.SURVIVORS]}, key=order_key)
    if me not in u3:
        raise PrivacyError(f"party {me}: told that its own masked update did not arrive; refusing")
    strangers = sorted(set(u3) - set(sess["roster"]))
    mine = [j for j in sess["neighbours"] if j in set(u3)]
    if strangers or not set(mine) <= set(sess["masked_with"]):
        raise PrivacyError(f"party {me}: the survivor set names parties that never masked with it "
                           f"({(strangers or sorted(set(mine) - set(sess['masked_with'])))[:8]}); refusing")
    if len(mine) + 1 < t:
        raise PrivacyError(f"party {me}: only {len(mine)} of its neighbours survived, fewer than t − 1 = {t - 1}; refusing "
                           "to take part in unmasking")
    signature = trust_of(party.state).sign(survivors_message(rnd, u3, sess["roster"]))
    sess.update(stage=C.STAGE_CONSISTENCY, survivors=u3)
    _maybe_drop(me, payload, C.STAGE_CONSISTENCY)
    update = Update({C.SURVIVORS_SIG: as_array(signature)}, 0, codec={C.CODEC: {"stage": C.STAGE_CONSISTENCY}})
    return Reply(me, C.STAGE_CONSISTENCY, rnd, update=update)


@_stage(after=C.STAGE_CONSISTENCY)
def unmask(party: Any, task: Task, sess: dict[str, Any], payload: Mapping[str, Any]) -> Reply:
    """Stage 5: if at least t of this party's share holders (itself included) signed the survivor
    set it signed, reveal seed shares of its holders in that set and key shares of the neighbours
    it masked with that are not in it — for each neighbour one or the other, once.

    Raises:
        PrivacyError: an invalid signature, fewer than t holders that agree, or a second request.
    """
    me, rnd, t = party.party_id, task.round, sess["threshold"]
    party.state.pop(C.STATE)  # answer once per round: the secrets go with this reply or not at all
    message = survivors_message(rnd, sess["survivors"], sess["roster"])
    trust = trust_of(party.state)
    agree = [me]
    for j in sess["neighbours"]:
        name = C.SIG_PREFIX + j
        if name in task.state:
            trust.verify(j, sess["pks"][j][2], _bytes(task.state, name), message)  # any bad one: abort
            agree.append(j)
    if len(agree) < t:
        raise PrivacyError(f"party {me}: only {len(agree)} of its share holders signed the survivor set it signed, "
                           f"fewer than t = {t} (parties were shown different survivors, or too many dropped); "
                           "refusing to unmask")
    survivors = set(sess["survivors"])
    seeds = [j for j in [me, *sess["neighbours"]] if j in survivors]
    keys = [j for j in sess["masked_with"] if j not in survivors]
    if set(seeds) & set(keys):  # cannot happen: both lists come from one survivor set
        raise PrivacyError(f"party {me}: {sorted(set(seeds) & set(keys))} would get both shares; refusing")
    out = {C.SEED_SHARE_PREFIX + j: as_array(sess["shares"][j][0]) for j in seeds}
    out.update({C.KEY_SHARE_PREFIX + j: as_array(sess["shares"][j][1]) for j in keys})
    _maybe_drop(me, payload, C.STAGE_UNMASK)
    return Reply(me, C.STAGE_UNMASK, rnd, update=Update(out, 0, codec={C.CODEC: {"stage": C.STAGE_UNMASK}}))


def _check_safe(me: str, k: int, t: int, params: Any) -> None:
    if not is_safe(k, t) and not params.trust_coordinator:
        raise PrivacyError(f"party {me}: threshold t = {t} of {k + 1} share holders is not above half: a coordinator that "
                           "lies about who dropped could rebuild single updates. Raise --secagg-threshold above 0.5, "
                           "or accept that risk with --secagg-trust-coordinator")


def _flat(layout: Layout, state: Mapping[str, np.ndarray]) -> np.ndarray:
    """The update as one vector in the narrowest type that holds every tensor exactly (float32 for
    a float32 model: half the bytes of float64; ``field.quantize`` widens it block by block)."""
    parts = [np.asarray(state[k]).ravel() for k in layout.names]
    return np.concatenate(parts, dtype=np.result_type(*parts)) if parts else np.zeros(0)


def _bytes(state: Mapping[str, np.ndarray], name: str) -> bytes:
    if name not in state:
        raise PrivacyError(f"secure-aggregation message lacks {name!r}")
    return np.asarray(state[name], dtype=np.uint8).tobytes()


def _maybe_drop(me: str, payload: Mapping[str, Any], stage: str) -> None:
    """Simulation: a party told to drop at this stage has done the work and now goes silent."""
    if me in payload.get(C.DROP, ()):
        raise PrivacyError(f"party {me} dropped out at {stage} (simulated)")


def task_handlers() -> dict[str, Any]:
    """The secure-aggregation task kinds and their party-side handlers (for ``PartyTables``)."""
    return {C.STAGE_SHARE_KEYS: share_keys, C.STAGE_MASKED_INPUT: masked_input, C.STAGE_CONSISTENCY: consistency,
            C.STAGE_UNMASK: unmask}
