"""TLS material for loopback servers: a private CA and certificates for 127.0.0.1, as PEM files."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pkgbuild.keys import new_certificate

Issuer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _a_day() -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.timezone.utc)
    return now - dt.timedelta(minutes=1), now + dt.timedelta(days=1)


def private_ca(common: str = "assist test CA") -> Issuer:
    """A self-signed CA (EC P-256) valid for a day, that may issue end certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        new_certificate(_name(common), _name(common), key.public_key(), _a_day())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return ca, key


def write_loopback_cert(directory: Path, issuer: Issuer | None = None) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (SAN IP), valid for a day, self-signed or issued by `issuer`:
    (directory/cert.pem, directory/key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("127.0.0.1")
    builder = new_certificate(
        name, issuer[0].subject if issuer else name, key.public_key(), _a_day()
    ).add_extension(
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        critical=False,
    )
    if issuer:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
