"""Who signed what: each party's long-term Ed25519 identity key, and how its peers come to trust it.

Bonawitz et al. 2017, Sec. 6 ("active adversary"): against a coordinator that lies, each party
signs its round keys and, in a consistency round, the set of survivors it was shown, with a
signing key the coordinator cannot forge — which needs a public-key infrastructure that binds each
signing key to its party. Without it the coordinator could stand in the middle of every key
agreement (relaying its own X25519 keys) and read the shares. Two ways to trust a peer's key:

- **certified** (deployment with certificates): ``pollen certs`` issues each party an Ed25519
  signing key and a certificate for it (``party-<id>.sign.key`` / ``.sign.pem``), signed by the
  federation's CA. A party accepts a peer's signing key only with a certificate for that peer's
  id issued by the CA in its own ``ca.pem``. This holds against a lying coordinator as long as
  the coordinator's operator does not hold the CA key.
- **pinned** (simulation, ``--insecure``, or no signing certificates): the first key seen for a
  peer is pinned (trust on first use) and any other key for that peer is refused afterwards. It
  holds against a coordinator that starts lying after the parties first met, not against one that
  lies from the start.

Signing keys come from the OS's secure generator (``cryptography``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pollen.errors import PrivacyError
from pollen.privacy.secagg import constants as C

SIGN_SUFFIX = ".sign"  # party-<id>.sign.key / party-<id>.sign.pem next to its TLS credentials


def raw_public(key: Ed25519PublicKey) -> bytes:
    """The 32-byte raw form of an Ed25519 public key."""
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(enc_pk: bytes, mask_pk: bytes) -> str:
    """A short hash of a party's round keys (what the survivor-set signature binds each survivor to)."""
    return hashlib.sha256(bytes(enc_pk) + bytes(mask_pk)).hexdigest()[:32]


def keys_message(rnd: int, party_id: str, enc_pk: bytes, mask_pk: bytes) -> bytes:
    """What a party signs when it advertises its round keys."""
    return C.SIGN_KEYS + json.dumps([rnd, party_id, bytes(enc_pk).hex(), bytes(mask_pk).hex()]).encode()


def survivors_message(rnd: int, survivors: Iterable[str], roster: Mapping[str, str]) -> bytes:
    """What a party signs in the consistency round: the round, and each survivor with its key fingerprint."""
    return C.SIGN_SURVIVORS + json.dumps([rnd, [[p, roster[p]] for p in sorted(survivors)]]).encode()


class Trust:
    """A party's identity (its signing key) and the peers' identity keys it accepts.

    Args:
        key: this party's Ed25519 signing key.
        credential: what it advertises: its raw public key (pinned mode) or its certificate (DER).
        ca: the federation's CA certificate (certified mode), or None (pinned mode).
    """

    def __init__(self, key: Ed25519PrivateKey, credential: bytes, ca: x509.Certificate | None = None) -> None:
        self.key = key
        self.credential = credential
        self.ca = ca
        self.pins: dict[str, bytes] = {}  # pinned mode: party -> its raw public key
        self.pin_file: Path | None = None  # where pins are kept across restarts (deployment)

    @classmethod
    def pinned(cls) -> "Trust":
        """A fresh signing key; peers' keys are trusted on first use."""
        key = Ed25519PrivateKey.generate()
        return cls(key, raw_public(key.public_key()))

    @classmethod
    def pinned_in(cls, folder: str | Path) -> "Trust":
        """A signing key and pins kept in ``folder`` (a deployed party without signing certificates):
        a restarted party keeps its identity, so its peers' pins still hold.

        Raises:
            PrivacyError: the files are there but unreadable.
        """
        d = Path(folder)
        key_file, pin_file = d / "secagg-identity.key", d / "secagg-pins.json"
        try:
            if key_file.exists():
                key = serialization.load_pem_private_key(key_file.read_bytes(), None)
                if not isinstance(key, Ed25519PrivateKey):
                    raise ValueError("not an Ed25519 key")
            else:
                key = Ed25519PrivateKey.generate()
                d.mkdir(parents=True, exist_ok=True)
                key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
                os.chmod(key_file, 0o600)
            pins = json.loads(pin_file.read_text()) if pin_file.exists() else {}
        except (OSError, ValueError) as exc:
            raise PrivacyError(f"cannot read this party's secure-aggregation identity in {d}: {exc}") from None
        trust = cls(key, raw_public(key.public_key()))
        trust.pins = {p: bytes.fromhex(k) for p, k in pins.items()}
        trust.pin_file = pin_file
        return trust

    @classmethod
    def certified(cls, certs_dir: str | Path, party_id: str) -> "Trust | None":
        """The party's signing key and certificate from ``certs_dir`` (None when it holds none).

        Raises:
            PrivacyError: the files are there but unreadable, or the certificate is not this party's.
        """
        from pollen.transport.rpc.tls import party_name

        d = Path(certs_dir)
        key_file, cert_file = d / f"{party_name(party_id)}{SIGN_SUFFIX}.key", d / f"{party_name(party_id)}{SIGN_SUFFIX}.pem"
        if not key_file.exists() or not cert_file.exists():
            return None
        try:
            key = serialization.load_pem_private_key(key_file.read_bytes(), None)
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
            ca = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
        except (OSError, ValueError) as exc:
            raise PrivacyError(f"cannot read this party's signing credentials in {d}: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey) or raw_public(key.public_key()) != _ed25519(cert, party_id, ca):
            raise PrivacyError(f"{cert_file} and {key_file} are not a matching Ed25519 pair for party {party_id}")
        return cls(key, cert.public_bytes(serialization.Encoding.DER), ca)

    def sign(self, message: bytes) -> bytes:
        """An Ed25519 signature of ``message`` (64 bytes)."""
        return self.key.sign(message)

    def key_of(self, party_id: str, credential: bytes) -> Ed25519PublicKey:
        """The identity key of ``party_id`` given its advertised ``credential``.

        Raises:
            PrivacyError: a credential this party does not accept for that peer.
        """
        credential = bytes(credential)
        if self.ca is not None:
            try:
                cert = x509.load_der_x509_certificate(credential)
            except ValueError:
                raise PrivacyError(f"party {party_id}'s signing credential is not a certificate; this party accepts only "
                                   "signing keys certified by the federation's CA") from None
            return Ed25519PublicKey.from_public_bytes(_ed25519(cert, party_id, self.ca))
        if len(credential) != 32:
            raise PrivacyError(f"party {party_id}'s signing credential is not a raw Ed25519 key (this party runs without "
                               "signing certificates)")
        pinned = self.pins.get(party_id)
        if pinned is None:
            self.pins[party_id] = pinned = credential
            if self.pin_file is not None:
                from pollen.client.ledger import write_atomic

                write_atomic(self.pin_file, json.dumps({p: k.hex() for p, k in self.pins.items()}).encode())
        if pinned != credential:
            raise PrivacyError(f"the coordinator presented another signing key for party {party_id} than before "
                               "(a substituted identity); refusing")
        return Ed25519PublicKey.from_public_bytes(credential)

    def verify(self, party_id: str, credential: bytes, signature: bytes, message: bytes) -> None:
        """Check ``party_id``'s ``signature`` of ``message``.

        Raises:
            PrivacyError: the credential is not accepted or the signature is invalid.
        """
        try:
            self.key_of(party_id, credential).verify(bytes(signature), message)
        except InvalidSignature:
            raise PrivacyError(f"party {party_id}'s signature does not verify (forged or altered message)") from None


def _ed25519(cert: x509.Certificate, party_id: str, ca: x509.Certificate) -> bytes:
    """The raw Ed25519 key a CA-issued certificate binds to ``party_id``.

    Raises:
        PrivacyError: not issued by ``ca``, expired, for another party, or not an Ed25519 key.
    """
    from pollen.transport.rpc.tls import party_name

    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise PrivacyError(f"party {party_id}'s signing certificate was not issued by this federation's CA") from None
    now = dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise PrivacyError(f"party {party_id}'s signing certificate is not valid now (expired?)")
    names = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    if names != [party_name(party_id) + SIGN_SUFFIX]:
        raise PrivacyError(f"a signing certificate for {names} was presented as party {party_id}'s")
    key = cert.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise PrivacyError(f"party {party_id}'s signing certificate does not hold an Ed25519 key")
    return raw_public(key)
