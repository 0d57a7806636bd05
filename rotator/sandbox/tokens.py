"""The sandbox's token signer: one RSA key and a self-signed certificate.

Registry tokens carry the certificate in ``x5c`` (standard base64 DER) so that Docker's real
registry, configured with the certificate as its ``rootcertbundle``, accepts them.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

ISSUER = "rotator-sandbox"


def self_signed_certificate(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    common_name: str,
    extensions: Iterable[tuple[x509.ExtensionType, bool]] = (),
) -> x509.Certificate:
    """A certificate for ``key`` issued by itself, valid from a day ago for ten years (sandbox use only);
    ``extensions`` are (extension, critical) pairs."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256())


class TokenSigner:
    def __init__(self, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.kid = libtrust_key_id(key.public_key())

    @classmethod
    def generate(cls) -> TokenSigner:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(key, self_signed_certificate(key, "rotator sandbox token signer"))

    @classmethod
    def load_or_generate(cls, directory: Path | None) -> TokenSigner:
        if directory is None:
            return cls.generate()
        key_path, cert_path = directory / "signer-key.pem", directory / "signer-cert.pem"
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            assert isinstance(key, rsa.RSAPrivateKey)
            return cls(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
        signer = cls.generate()
        key_path.write_bytes(
            signer.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        cert_path.write_bytes(signer.cert_pem())
        return signer

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def sign(self, claims: dict[str, Any], *, x5c: bool = True) -> str:
        headers: dict[str, Any] = {"kid": self.kid}
        if x5c:
            headers["x5c"] = [self._x5c]
        return jwt.encode(claims, self.key, algorithm="RS256", headers=headers)

    def verify(self, token: str, *, audience: str | None = None) -> dict[str, Any]:
        """Decoded claims of a token this signer issued; raises ``jwt.PyJWTError`` otherwise."""
        claims: dict[str, Any] = jwt.decode(
            token,
            self.key.public_key(),
            algorithms=["RS256"],
            audience=audience,
            options={"verify_aud": audience is not None},
        )
        return claims


def libtrust_key_id(public_key: rsa.RSAPublicKey) -> str:
    """Docker's libtrust key id: base32 of sha256(SPKI DER)[:30], in 12 groups of 4."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, 48, 4))
