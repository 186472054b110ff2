"""Long-term identities: a key pair per daemon or tracker, and the id derived from it.

A peer id (and a tracker's fingerprint) is the SHA-256 of the DER SubjectPublicKeyInfo of the
key. Pinning the key rather than the certificate lets a certificate be re-issued without
changing who the peer is.
"""

import datetime
import hashlib
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from peerit.errors import PeeritError
from peerit.fingerprints import (  # noqa: F401 (also this module's API)
    PEER_ID_SIZE, format_fingerprint, parse_fingerprint)


def peer_id_of_public_key(public_key) -> bytes:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def peer_id_of_certificate(cert) -> bytes:
    """Peer id proven by a certificate (a cryptography or pyOpenSSL certificate)."""
    if not isinstance(cert, x509.Certificate):
        cert = cert.to_cryptography()
    return peer_id_of_public_key(cert.public_key())


@dataclass(frozen=True)
class Identity:
    """A private key, its self-signed certificate and the id they prove."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def peer_id(self) -> bytes:
        return peer_id_of_public_key(self.key.public_key())

    @property
    def fingerprint(self) -> str:
        return format_fingerprint(self.peer_id)

    @classmethod
    def generate(cls, common_name: str = "peer-it") -> "Identity":
        key = ec.generate_private_key(ec.SECP256R1())
        return cls(key, _self_signed(key, common_name))

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption())

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def load_or_create(cls, directory: str, common_name: str = "peer-it") -> "Identity":
        """The identity kept in ``directory`` (identity.key/identity.crt), created on first use.

        The key file is written 0600 and renamed into place, so a crash never leaves half a
        key; a certificate that expires is re-issued from the same key (same peer id).
        """
        os.makedirs(directory, mode=0o700, exist_ok=True)
        key_path = os.path.join(directory, "identity.key")
        cert_path = os.path.join(directory, "identity.crt")
        if os.path.exists(key_path):
            try:
                with open(key_path, "rb") as f:
                    key = serialization.load_pem_private_key(f.read(), password=None)
            except (ValueError, TypeError) as e:
                raise PeeritError(f"cannot read identity key {key_path}: {e}") from None
            cert = None
            if os.path.exists(cert_path):
                with open(cert_path, "rb") as f:
                    try:
                        cert = x509.load_pem_x509_certificate(f.read())
                    except ValueError:
                        cert = None
            now = datetime.datetime.now(datetime.timezone.utc)
            if (cert is None or cert.not_valid_after_utc < now + datetime.timedelta(days=30)
                    or peer_id_of_certificate(cert) != peer_id_of_public_key(key.public_key())):
                cert = _self_signed(key, common_name)
                _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
            return cls(key, cert)
        identity = cls.generate(common_name)
        _write_atomic(key_path, identity.key_pem(), 0o600)
        _write_atomic(cert_path, identity.certificate_pem(), 0o644)
        return identity


def _self_signed(key, common_name: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .sign(key, hashes.SHA256()))


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
