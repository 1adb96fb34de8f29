"""Certificates for mutual TLS: a private CA, the coordinator's server certificate, and one
client certificate per party (its common name is ``party-<id>``) plus an ``admin`` one for
``pollen status``.

Authentication is mutual TLS: the coordinator accepts only client certificates signed by the
run's CA, and a party may only speak for the id in its certificate. Revocation is a plain file
of party ids or certificate serial numbers (hex), one per line, re-read when it changes.

Keys are ECDSA P-256 from ``cryptography`` (its key generation draws from the OS's secure random
source); serial numbers come from ``x509.random_serial_number`` (also ``os.urandom``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pollen.errors import TransportError

PARTY_PREFIX = "party-"
ADMIN_NAME = "admin"
VALID_DAYS = 365


def party_name(party_id: str) -> str:
    """The certificate common name of a party."""
    return f"{PARTY_PREFIX}{party_id}"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pollen"), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)


def _issue(cn: str, ca_key, ca_name: x509.Name, *, server_hosts: Sequence[str] = (), ca: bool = False):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_name if not ca else _name(cn))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=VALID_DAYS))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server_hosts:
        sans: list[x509.GeneralName] = []
        for h in server_hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    elif not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    cert = b.sign(ca_key if not ca else key, hashes.SHA256())
    return key, cert


def _issue_signing(cn: str, ca_key, ca_name: x509.Name):
    """An Ed25519 signing key and its certificate (no TLS use): a party's identity in secure aggregation."""
    key = ed25519.Ed25519PrivateKey.generate()
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def make_certs(out: str | Path, party_ids: Sequence[str], hosts: Sequence[str] = ("localhost", "127.0.0.1")) -> Path:
    """Create ``ca.pem``/``ca.key``, ``server.pem``/``server.key``, ``party-<id>.pem``/``.key``,
    ``admin.pem``/``.key``, each party's secure-aggregation signing identity
    ``party-<id>.sign.pem``/``.sign.key`` and an empty ``revoked.txt`` in ``out``.

    Args:
        out: the folder (created).
        party_ids: the parties to issue certificates for.
        hosts: host names and IP addresses the server certificate is valid for.

    Raises:
        TransportError: ``out`` already holds a CA (refuses to overwrite keys).
    """
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    if (d / "ca.key").exists():
        raise TransportError(f"{d} already holds a CA (ca.key); choose another folder or delete it first")
    ca_key, ca_cert = _issue("pollen-ca", None, _name("pollen-ca"), ca=True)
    _write_key(ca_key, d / "ca.key")
    (d / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    issued = [("server", "server", tuple(hosts)), (ADMIN_NAME, ADMIN_NAME, ())]
    issued += [(party_name(p), party_name(p), ()) for p in party_ids]
    for file, cn, sans in issued:
        key, cert = _issue(cn, ca_key, ca_cert.subject, server_hosts=sans)
        _write_key(key, d / f"{file}.key")
        (d / f"{file}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for p in party_ids:  # secure aggregation's signing identities (pollen.privacy.secagg.identity)
        key, cert = _issue_signing(party_name(p) + ".sign", ca_key, ca_cert.subject)
        _write_key(key, d / f"{party_name(p)}.sign.key")
        (d / f"{party_name(p)}.sign.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    revoked = d / "revoked.txt"
    if not revoked.exists():
        revoked.write_text("# revoked party ids or certificate serials (hex), one per line\n")
    return d


def read_file(path: Path, what: str) -> bytes:
    """Read a credential file with an error that says how to make it."""
    try:
        return path.read_bytes()
    except OSError:
        raise TransportError(f"{what} {path} not found; create credentials with "
                             f"'pollen certs --out {path.parent}' (or pass --insecure for a local experiment)") from None


def serial_of(pem: bytes) -> str:
    """A certificate's serial number as lower-case hex."""
    return format(x509.load_pem_x509_certificate(pem).serial_number, "x")


class RevocationList:
    """Revoked party ids and serials from a file, re-read when the file changes.

    Args:
        path: the file (a missing file revokes nothing).
    """

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path else None
        self._mtime: float | None = None
        self._entries: set[str] = set()

    def entries(self) -> set[str]:
        """The current entries."""
        if self.path is None or not self.path.exists():
            return set()
        mtime = self.path.stat().st_mtime
        if mtime != self._mtime:
            lines = (ln.split("#", 1)[0].strip().lower() for ln in self.path.read_text().splitlines())
            self._entries, self._mtime = {ln for ln in lines if ln}, mtime
        return self._entries

    def is_revoked(self, party_id: str, serial: str | None) -> bool:
        """True when the party id or the certificate serial is listed."""
        e = self.entries()
        return party_id.lower() in e or party_name(party_id).lower() in e or (serial is not None and serial.lower() in e)
