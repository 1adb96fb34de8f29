"""Stage names and message keys of the secure-aggregation protocol, in one module shared by the
coordinator (``protocol.py``) and the parties (``party.py``) so that the two sides cannot drift
(as Flower's ``secaggplus`` constants module does).

A round of SecAgg+ (Bell et al. 2020) with the active-adversary checks of Bonawitz et al. 2017
(Sec. 6: signed keys and a consistency round) runs five request/response stages:

1. ``fit`` (advertise keys): the party trains, keeps its update, and answers with two X25519
   public keys (one to encrypt shares, one to agree masks), signed with its long-term Ed25519
   identity key, and its example count.
2. ``secagg_share_keys``: the party checks the round's parameters against the ones it fixed when
   it joined (t, k, its neighbours in the graph) and every neighbour's signed keys, Shamir-shares
   its self-mask seed and its mask secret key among its neighbours and answers with the shares,
   each encrypted (AES-GCM) to its recipient.
3. ``secagg_masked_input``: the party receives the shares addressed to it (it aborts if fewer than
   t of its share holders remain), quantises its update into Z_{2^bits}, adds its self mask and
   pairwise masks, and answers with the masked vector.
4. ``secagg_consistency``: the party is told which parties' masked vectors arrived (U3), checks it,
   and signs it: a commitment to one view of who survived.
5. ``secagg_unmask``: the party checks that at least t of its share holders signed the same U3,
   then reveals self-mask-seed shares of its neighbours in U3 and mask-key shares of those that
   dropped, as its own U3 says; the coordinator rebuilds the masks and removes them.
"""

from __future__ import annotations

STAGE_ADVERTISE = "fit"  # stage 1 is the ordinary fit task: the update never leaves the party
STAGE_SHARE_KEYS = "secagg_share_keys"
STAGE_MASKED_INPUT = "secagg_masked_input"
STAGE_CONSISTENCY = "secagg_consistency"
STAGE_UNMASK = "secagg_unmask"
STAGES = (STAGE_ADVERTISE, STAGE_SHARE_KEYS, STAGE_MASKED_INPUT, STAGE_CONSISTENCY, STAGE_UNMASK)

EXTRA = "secagg"  # RoundConfig.extra key holding a stage's JSON payload
STATE = "secagg"  # LocalParty.state key holding the party's session of the current round
TRUST = "secagg_trust"  # LocalParty.state key holding the party's identity and the peers it trusts
LAST_ROUND = "secagg_last_round"  # LocalParty.state key: the last round this party advertised keys in
CODEC = "secagg"  # Update.codec key marking a secure-aggregation message

# Array names (Task.state on the way down, Update.delta on the way up).
ENC_PK = "enc_pk"  # X25519 public key for encrypting shares, uint8 (32,)
MASK_PK = "mask_pk"  # X25519 public key for agreeing pairwise masks, uint8 (32,)
IDENTITY = "identity"  # the party's identity credential: an Ed25519 public key, or a CA-signed certificate
KEYS_SIG = "keys_sig"  # Ed25519 signature of (round, party, enc_pk, mask_pk), uint8 (64,)
SURVIVORS_SIG = "survivors_sig"  # Ed25519 signature of (round, U3 with key fingerprints), uint8 (64,)
PK_PREFIX = "pk/"  # "pk/<party>/enc", "pk/<party>/mask", "pk/<party>/id", "pk/<party>/sig": a neighbour's keys
SIG_PREFIX = "sig/"  # "sig/<party>": a share holder's signature of the survivor set
CT_PREFIX = "ct/"  # "ct/<party>": an encrypted share bundle to (up) or from (down) that party
MASKED = "masked"  # the masked, quantised update in Z_2^bits, sent as int32 / int64 bits (D,)
SEED_SHARE_PREFIX = "seed/"  # "seed/<party>": a share of a survivor's self-mask seed
KEY_SHARE_PREFIX = "key/"  # "key/<party>": a share of a dropped party's mask secret key

# Payload fields (RoundConfig.extra["secagg"]).
DROP = "drop"  # simulation only: the party does the stage's work, then drops out silently
NEIGHBOURS = "neighbours"
THRESHOLD = "threshold"
ROSTER = "roster"  # {party: key fingerprint} of every party that advertised keys (U1)
SURVIVORS = "survivors"
FIELD = "field"
NOISE_VARIANCE = "noise_variance"  # this party's share of the Skellam noise variance, integer units (0: none)

# HKDF "info" labels: one derived key per purpose (domain separation).
INFO_SHARE = b"pollen/secagg/v1/share-encryption"
INFO_PAIR = b"pollen/secagg/v1/pairwise-mask"
INFO_SELF = b"pollen/secagg/v1/self-mask"
SIGN_KEYS = b"pollen/secagg/v2/round-keys"  # Ed25519 signature domains
SIGN_SURVIVORS = b"pollen/secagg/v2/survivors"
GRAPH_SEED = b"pollen/secagg/v2/graph"
