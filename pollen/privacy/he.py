"""Homomorphic encryption of party updates with CKKS (TenSEAL).

CKKS: Cheon, Kim, Kim and Song, "Homomorphic Encryption for Arithmetic of Approximate Numbers",
ASIACRYPT 2017. TenSEAL: Benaissa et al., "TenSEAL: A Library for Encrypted Tensor Operations
Using Homomorphic Encryption", 2021 (on Microsoft SEAL).

Protocol (one round)::

    party i : c_i = Enc_pk(n_i · Δ_i)        flattened, batched 4,096 slots per ciphertext
    server  : C = Σ_i c_i                    public context only: no secret key anywhere in its code
    key holder (a party of the round): S = Dec_sk(C) = Σ n_i Δ_i, sent back in the clear
    server  : Δ = S / Σ n_i                  then the usual server optimizer

Threat model: an honest-but-curious coordinator that does not collude with a key-holding party
sees ciphertexts and the aggregate only. The key holder sees the aggregate only (the server
forwards no single party's ciphertext). Everyone who holds ``secret.ctx`` could decrypt any
ciphertext it obtains: keep that file on the parties (``pollen keys`` writes it apart from
``public.ctx``). Keys and encryption randomness come from SEAL's cryptographically secure
PRNG (seeded from the operating system), not from a seeded generator.

Cost: a ciphertext of poly-modulus degree 8192 with one 60-bit data prime holds 4,096 floats in
about 131 kB, i.e. 32 bytes per parameter (8x float32); see docs/privacy-he-attacks.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pollen.errors import ConfigError, PrivacyError, require
from pollen.types import ModelState, Update

SECRET_FILE = "secret.ctx"
PUBLIC_FILE = "public.ctx"
INFO_FILE = "keys.json"
DATA_KEY, OFFSETS_KEY = "ckks.data", "ckks.offsets"
# The sum of the whole round must stay below 2^(q - scale - 1); one party's update must leave
# room for this many parties of the same size (checked on the party before it encrypts).
PARTY_HEADROOM = 1024


def _ts() -> Any:
    return require("tenseal", "he", "homomorphic encryption (--he)")


# ---------------------------------------------------------------- keys
def generate_keys(poly_modulus_degree: int = 8192, coeff_bits: Sequence[int] = (60, 60),
                  scale_bits: int = 36) -> tuple[bytes, bytes, dict[str, Any]]:
    """A fresh CKKS key pair.

    Only additions are done on ciphertexts, so no multiplicative level is needed: one data prime
    plus the special prime (``coeff_bits=(60, 60)``) gives the smallest ciphertexts. 120 bits of
    modulus at degree 8192 is within the 218 bits SEAL allows for 128-bit security.

    Returns:
        (secret context bytes, public context bytes, parameters as a dict).

    Raises:
        ConfigError: parameters SEAL or the overflow bound cannot accept.
    """
    ts = _ts()
    if scale_bits >= coeff_bits[0] - 8:
        raise ConfigError(f"scale_bits={scale_bits} leaves no room for values below the {coeff_bits[0]}-bit data prime; "
                          f"use at most {coeff_bits[0] - 9}")
    try:
        ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree, coeff_mod_bit_sizes=list(coeff_bits))
    except ValueError as exc:
        raise ConfigError(f"SEAL refused CKKS parameters degree={poly_modulus_degree}, coeff_bits={list(coeff_bits)}: {exc}") from None
    ctx.global_scale = 2.0**scale_bits
    secret = ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
    public = ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    info = {"scheme": "ckks", "poly_modulus_degree": poly_modulus_degree, "coeff_bits": list(coeff_bits),
            "scale_bits": scale_bits, "slots": poly_modulus_degree // 2,
            "max_abs_sum": 2.0 ** (coeff_bits[0] - scale_bits - 1)}
    return secret, public, info


def write_keys(out: str | Path, **params: Any) -> dict[str, Path]:
    """Generate keys into ``out``: ``secret.ctx`` (parties / key holder), ``public.ctx`` (server).

    Raises:
        ConfigError: ``out`` already holds keys (never overwritten).
    """
    out = Path(out)
    if (out / SECRET_FILE).exists() or (out / PUBLIC_FILE).exists():
        raise ConfigError(f"{out} already holds CKKS keys; choose another --out or delete them first")
    secret, public, info = generate_keys(**params)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"secret": out / SECRET_FILE, "public": out / PUBLIC_FILE, "info": out / INFO_FILE}
    paths["secret"].write_bytes(secret)
    paths["secret"].chmod(0o600)
    paths["public"].write_bytes(public)
    paths["info"].write_text(json.dumps(info, indent=2))
    return paths


def load_context(path: str | Path, secret: bool) -> Any:
    """Load a TenSEAL context; ``secret=False`` refuses a file that carries the secret key.

    Raises:
        ConfigError: missing file, or a secret key where a public context is expected (or none
            where one is needed).
    """
    ts = _ts()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"CKKS key file {p} does not exist; create keys with 'pollen keys --out DIR'")
    ctx = ts.context_from(p.read_bytes())
    if not secret and ctx.has_secret_key():
        raise PrivacyError(f"{p} holds the secret key; the server must load public.ctx, which has none")
    if secret and not ctx.has_secret_key():
        raise ConfigError(f"{p} has no secret key; decryption needs {SECRET_FILE} from 'pollen keys'")
    return ctx


def read_info(keys_dir: str | Path) -> dict[str, Any]:
    """The parameters ``pollen keys`` wrote next to the contexts."""
    p = Path(keys_dir) / INFO_FILE
    if not p.is_file():
        raise ConfigError(f"{p} does not exist; create keys with 'pollen keys --out {keys_dir}'")
    return json.loads(p.read_text())


# ---------------------------------------------------------------- vectors <-> ciphertexts
def encrypt_vector(ctx: Any, vec: np.ndarray, slots: int) -> dict[str, np.ndarray]:
    """Encrypt a 1-D float vector, ``slots`` values per ciphertext, packed as uint8 arrays.

    Returns:
        ``{ckks.data: uint8 (total bytes,), ckks.offsets: int64 (ciphertexts + 1,)}``.
    """
    ts = _ts()
    blobs = [ts.ckks_vector(ctx, vec[i : i + slots]).serialize() for i in range(0, len(vec), slots)]
    return pack(blobs)


def pack(blobs: Sequence[bytes]) -> dict[str, np.ndarray]:
    """Serialised ciphertexts as one uint8 array plus offsets (safetensors carries both)."""
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return {DATA_KEY: np.frombuffer(b"".join(blobs), dtype=np.uint8), OFFSETS_KEY: offsets}


def unpack(packed: Mapping[str, np.ndarray]) -> list[bytes]:
    """Inverse of ``pack``.

    Raises:
        PrivacyError: the arrays are not a packed list of ciphertexts.
    """
    if DATA_KEY not in packed or OFFSETS_KEY not in packed:
        raise PrivacyError(f"expected encrypted tensors {DATA_KEY!r} and {OFFSETS_KEY!r}; got {sorted(packed)[:4]}")
    data, off = packed[DATA_KEY], packed[OFFSETS_KEY]
    if data.dtype != np.uint8 or off.ndim != 1 or off[0] != 0 or off[-1] != data.size or np.any(np.diff(off) <= 0):
        raise PrivacyError("malformed ciphertext package (dtype, offsets or length do not match)")
    raw = data.tobytes()
    return [raw[a:b] for a, b in zip(off[:-1], off[1:])]


def sum_encrypted(public_ctx: Any, packs: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Σ of several parties' packed ciphertexts, slot by slot, with the public context only.

    Raises:
        PrivacyError: packages of different lengths (different models or layouts).
    """
    ts = _ts()
    if public_ctx.has_secret_key():
        raise PrivacyError("sum_encrypted was given a context with the secret key; the server must not hold it")
    lists = [unpack(p) for p in packs]
    if len({len(x) for x in lists}) != 1:
        raise PrivacyError(f"parties sent different numbers of ciphertexts: {sorted({len(x) for x in lists})}")
    out = []
    for blobs in zip(*lists):
        acc = ts.ckks_vector_from(public_ctx, blobs[0])
        for b in blobs[1:]:
            acc += ts.ckks_vector_from(public_ctx, b)
        out.append(acc.serialize())
    return pack(out)


def decrypt_vector(secret_ctx: Any, packed: Mapping[str, np.ndarray], length: int) -> np.ndarray:
    """Decrypt packed ciphertexts into a float64 vector of ``length`` values."""
    ts = _ts()
    parts = [np.asarray(ts.ckks_vector_from(secret_ctx, b).decrypt(), dtype=np.float64) for b in unpack(packed)]
    vec = np.concatenate(parts) if parts else np.zeros(0)
    if vec.size != length:
        raise PrivacyError(f"decrypted {vec.size} values, the layout expects {length}")
    return vec


# ---------------------------------------------------------------- model states <-> vectors
@dataclass(frozen=True)
class Layout:
    """Names, shapes and dtypes of the tensors flattened into one vector (JSON-able)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, state: Mapping[str, np.ndarray]) -> "Layout":
        return cls(tuple(state), tuple(tuple(v.shape) for v in state.values()), tuple(str(v.dtype) for v in state.values()))

    @property
    def size(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.shapes))

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes], "dtypes": list(self.dtypes)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Layout":
        return cls(tuple(d["names"]), tuple(tuple(s) for s in d["shapes"]), tuple(d["dtypes"]))

    def flatten(self, state: Mapping[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(state[k], dtype=np.float64).ravel() for k in self.names]) if self.names else np.zeros(0)

    def unflatten(self, vec: np.ndarray) -> ModelState:
        """Split a vector back into tensors (integer buffers rounded to their dtype)."""
        out: ModelState = {}
        pos = 0
        for name, shape, dtype in zip(self.names, self.shapes, self.dtypes):
            n = int(np.prod(shape))
            part = vec[pos : pos + n].reshape(shape)
            dt = np.dtype(dtype)
            out[name] = part.astype(dt) if np.issubdtype(dt, np.floating) else np.rint(part).astype(dt)
            pos += n
        return out


def check_headroom(vec: np.ndarray, info: Mapping[str, Any], party_id: str) -> None:
    """Refuse an update so large that a round of ``PARTY_HEADROOM`` such parties could overflow.

    Raises:
        PrivacyError: naming the party and the fix.
    """
    limit = float(info["max_abs_sum"]) / PARTY_HEADROOM
    peak = float(np.max(np.abs(vec))) if vec.size else 0.0
    if not np.isfinite(peak) or peak >= limit:
        raise PrivacyError(
            f"party {party_id}: weighted update reaches {peak:.3g}, above the CKKS bound {limit:.3g} "
            f"(scale 2^{info['scale_bits']}); create keys with a smaller --scale-bits, or clip updates")
