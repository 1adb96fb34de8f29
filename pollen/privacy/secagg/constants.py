"""Stage names and message keys of the secure-aggregation protocol, in one module shared by the
coordinator (``protocol.py``) and the parties (``party.py``) so that the two sides cannot drift
(as Flower's ``secaggplus`` constants module does).

A round of SecAgg+ (Bell et al. 2020) runs four request/response stages over the transport:

1. ``fit`` (advertise keys): the party trains, keeps its update, and answers with two X25519
   public keys (one to encrypt shares, one to agree masks) and its example count.
2. ``secagg_share_keys``: the party Shamir-shares its self-mask seed and its mask secret key
   among its neighbours and answers with the shares, each encrypted (AES-GCM) to its recipient.
3. ``secagg_masked_input``: the party receives the shares addressed to it, quantises its update
   into Z_{2^bits}, adds its self mask and pairwise masks, and answers with the masked vector.
4. ``secagg_unmask``: the party reveals self-mask-seed shares of surviving neighbours and mask-key
   shares of neighbours that dropped; the coordinator rebuilds the masks and removes them.
"""

from __future__ import annotations

STAGE_ADVERTISE = "fit"  # stage 1 is the ordinary fit task: the update never leaves the party
STAGE_SHARE_KEYS = "secagg_share_keys"
STAGE_MASKED_INPUT = "secagg_masked_input"
STAGE_UNMASK = "secagg_unmask"
STAGES = (STAGE_ADVERTISE, STAGE_SHARE_KEYS, STAGE_MASKED_INPUT, STAGE_UNMASK)

EXTRA = "secagg"  # RoundConfig.extra key holding a stage's JSON payload
STATE = "secagg"  # LocalParty.state key holding the party's session of the current round
CODEC = "secagg"  # Update.codec key marking a secure-aggregation message

# Array names (Task.state on the way down, Update.delta on the way up).
ENC_PK = "enc_pk"  # X25519 public key for encrypting shares, uint8 (32,)
MASK_PK = "mask_pk"  # X25519 public key for agreeing pairwise masks, uint8 (32,)
PK_PREFIX = "pk/"  # "pk/<party>/enc", "pk/<party>/mask": a neighbour's public keys
CT_PREFIX = "ct/"  # "ct/<party>": an encrypted share bundle to (up) or from (down) that party
MASKED = "masked"  # the masked, quantised update in Z_2^bits, sent as int32 / int64 bits (D,)
SEED_SHARE_PREFIX = "seed/"  # "seed/<party>": a share of a survivor's self-mask seed
KEY_SHARE_PREFIX = "key/"  # "key/<party>": a share of a dropped party's mask secret key

# Payload fields (RoundConfig.extra["secagg"]).
DROP = "drop"  # simulation only: the party does the stage's work, then drops out silently
NEIGHBOURS = "neighbours"
THRESHOLD = "threshold"
SURVIVORS = "survivors"
DROPPED = "dropped"
FIELD = "field"
NOISE_VARIANCE = "noise_variance"  # this party's share of the Skellam noise variance, integer units (0: none)

# HKDF "info" labels: one derived key per purpose (domain separation).
INFO_SHARE = b"pollen/secagg/v1/share-encryption"
INFO_PAIR = b"pollen/secagg/v1/pairwise-mask"
INFO_SELF = b"pollen/secagg/v1/self-mask"
