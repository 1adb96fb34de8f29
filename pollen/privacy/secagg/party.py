"""The party side of SecAgg+: one function per protocol stage (see ``constants.py``).

A party's secrets for the current round live in ``LocalParty.state["secagg"]`` and never leave
it: the update in the clear, both X25519 private keys, the self-mask seed, and the shares other
parties sent it. What it sends: public keys, shares encrypted to their recipients, the masked
update, and — once — either a self-mask-seed share or a mask-key share of each neighbour, never
both. Bonawitz et al. 2017 (Fig. 4, the client's rounds 0–4); Bell et al. 2020 (neighbours only).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from pollen.client.party import party_index
from pollen.errors import PrivacyError
from pollen.privacy.he import Layout
from pollen.privacy.secagg import constants as C
from pollen.privacy.secagg import field, masks, shamir
from pollen.privacy.secagg.graph import order_key
from pollen.transforms.base import StepContext
from pollen.types import Reply, Task, Update


def as_array(data: bytes) -> np.ndarray:
    """Bytes as a uint8 vector (how keys, ciphertexts and shares travel)."""
    return np.frombuffer(data, dtype=np.uint8).copy()


def address(sender: str, recipient: str, round: int) -> bytes:
    """The associated data binding an encrypted share to its sender, recipient and round."""
    return f"{sender}>{recipient}@{round}".encode()


def advertise(update: Update, ctx: StepContext) -> Update:
    """Stage 1, run as the last pipeline step of ``fit``: keep the update, send two public keys.

    Raises:
        PrivacyError: a compressed update (masks need the plain values), or a simulated dropout.
    """
    if update.codec:
        raise PrivacyError(f"party {ctx.party_id}: secure aggregation cannot mask a compressed update "
                           f"(codec {sorted(update.codec)}); turn compression off with --secagg")
    enc_key, mask_key = masks.new_private_key(), masks.new_private_key()
    layout = Layout.of(update.delta)
    ctx.party_state[C.STATE] = {
        "round": ctx.round, "enc_key": enc_key, "mask_key": mask_key,
        "seed": os.urandom(32),  # self-mask seed, from the OS's secure generator
        "delta": update.delta, "layout": layout, "num_examples": int(update.num_examples), "shares": {},
    }
    _maybe_drop(ctx.party_id, ctx.extra.get(C.EXTRA, {}), C.STAGE_ADVERTISE)
    delta = {C.ENC_PK: as_array(masks.public_bytes(enc_key)), C.MASK_PK: as_array(masks.public_bytes(mask_key))}
    return Update(delta=delta, num_examples=update.num_examples, metrics=update.metrics,
                  codec={C.CODEC: {"stage": C.STAGE_ADVERTISE, "layout": layout.to_dict()}})


def share_keys(party: Any, task: Task) -> Reply:
    """Stage 2: Shamir-share the self-mask seed and the mask key among the neighbours and this
    party (t of them rebuild either), each neighbour's pair encrypted to it with AES-GCM."""
    me, rnd = party.party_id, task.round
    sess = _session(party, rnd, "delta")
    payload = task.config.extra[C.EXTRA]
    neighbours = [str(j) for j in payload[C.NEIGHBOURS]]
    t = int(payload[C.THRESHOLD])
    pks = {j: (_bytes(task.state, f"{C.PK_PREFIX}{j}/enc"), _bytes(task.state, f"{C.PK_PREFIX}{j}/mask"))
           for j in neighbours}
    holders = sorted([me, *neighbours], key=order_key)
    seed_shares = shamir.split(sess["seed"], t, len(holders))
    key_shares = shamir.split(masks.private_bytes(sess["mask_key"]), t, len(holders))
    out = {}
    for holder, s_seed, s_key in zip(holders, seed_shares, key_shares):
        if holder == me:
            sess["shares"][me] = (s_seed, s_key)
            continue
        key = masks.derive(masks.agree(sess["enc_key"], pks[holder][0]), C.INFO_SHARE, rnd)
        out[C.CT_PREFIX + holder] = as_array(masks.seal(key, s_seed + s_key, address(me, holder, rnd)))
    sess.update(neighbours=neighbours, pks=pks, threshold=t)
    _maybe_drop(me, payload, C.STAGE_SHARE_KEYS)
    return Reply(me, C.STAGE_SHARE_KEYS, rnd, update=Update(out, 0, codec={C.CODEC: {"stage": C.STAGE_SHARE_KEYS}}))


def masked_input(party: Any, task: Task) -> Reply:
    """Stage 3: store the shares addressed to this party, then send
    ``y = w·q(Δ) + PRG(seed) + Σ_{j<me} PRG(s_ij) − Σ_{j>me} PRG(s_ij)`` in Z_{2^bits} over the
    neighbours that completed stage 2."""
    me, rnd = party.party_id, task.round
    sess = _session(party, rnd, "pks")
    payload = task.config.extra[C.EXTRA]
    peers = [str(j) for j in payload[C.SURVIVORS]]
    unknown = sorted(set(peers) - set(sess["neighbours"]))
    if unknown:
        raise PrivacyError(f"party {me}: asked to mask with {unknown}, which are not its neighbours")
    for j in peers:
        name = C.CT_PREFIX + j
        if name not in task.state:
            raise PrivacyError(f"party {me}: no encrypted shares from neighbour {j} in round {rnd}")
        key = masks.derive(masks.agree(sess["enc_key"], sess["pks"][j][0]), C.INFO_SHARE, rnd)
        plain = masks.open_sealed(key, task.state[name].tobytes(), address(j, me, rnd))
        sess["shares"][j] = (plain[: shamir.SHARE_BYTES], plain[shamir.SHARE_BYTES :])
    spec = field.FieldSpec.from_dict(payload[C.FIELD])
    rng = np.random.default_rng([party.seed, party_index(me), rnd, 0x5EC])  # rounding only
    layout = sess["layout"]
    exact = field.integer_segments(layout.shapes, layout.dtypes)
    y, clipped = field.quantize(layout.flatten(sess.pop("delta")), spec, int(payload["weight"]), rng, exact)
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
    sess["masked_with"] = peers
    _maybe_drop(me, payload, C.STAGE_MASKED_INPUT)
    wire = y.view(field.SIGNED[spec.bits])  # same bits; transports accept signed integer tensors
    update = Update({C.MASKED: wire}, sess["num_examples"], metrics={"secagg_clipped": clipped},
                    codec={C.CODEC: {"stage": C.STAGE_MASKED_INPUT}})
    return Reply(me, C.STAGE_MASKED_INPUT, rnd, update=update)


def unmask(party: Any, task: Task) -> Reply:
    """Stage 4: reveal seed shares of surviving holders and key shares of dropped neighbours.

    Raises:
        PrivacyError: a party named both survivor and dropped, fewer survivors than the threshold
            (revealing would then help nobody but an attacker), or a second unmask request.
    """
    me, rnd = party.party_id, task.round
    sess = _session(party, rnd, "masked_with")
    party.state.pop(C.STATE)  # answer once per round: the secrets go with this reply
    payload = task.config.extra[C.EXTRA]
    survivors = {str(j) for j in payload[C.SURVIVORS]}
    dropped = {str(j) for j in payload[C.DROPPED]}
    if survivors & dropped:
        raise PrivacyError(f"party {me}: {sorted(survivors & dropped)} named both survivor and dropped; refusing")
    if not dropped <= set(sess["masked_with"]) or not survivors <= set(sess["shares"]):
        raise PrivacyError(f"party {me}: unmask request names parties it holds no shares of")
    if len(survivors) < sess["threshold"]:
        raise PrivacyError(f"party {me}: {len(survivors)} survivors < threshold {sess['threshold']}; refusing to unmask")
    out = {C.SEED_SHARE_PREFIX + j: as_array(sess["shares"][j][0]) for j in survivors}
    out.update({C.KEY_SHARE_PREFIX + j: as_array(sess["shares"][j][1]) for j in dropped if j in sess["shares"]})
    _maybe_drop(me, payload, C.STAGE_UNMASK)
    return Reply(me, C.STAGE_UNMASK, rnd, update=Update(out, 0, codec={C.CODEC: {"stage": C.STAGE_UNMASK}}))


def _session(party: Any, rnd: int, needs: str) -> dict[str, Any]:
    sess = party.state.get(C.STATE)
    if sess is None or sess["round"] != rnd or needs not in sess:
        raise PrivacyError(f"party {party.party_id}: no secure-aggregation session at this stage of round {rnd} "
                           "(a stage was skipped or repeated)")
    return sess


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
    return {C.STAGE_SHARE_KEYS: share_keys, C.STAGE_MASKED_INPUT: masked_input, C.STAGE_UNMASK: unmask}
