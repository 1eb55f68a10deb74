"""Throwaway TLS material for tests: a self-signed CA, a server and a client certificate.

    from certs import make_tls_files   # pytest puts tests/ on sys.path
    tls = make_tls_files(tmp_path)   # TlsFiles of PEM paths
    SecurityConfig(tls_cert=tls.server_cert, tls_key=tls.server_key)   # server
    SecurityConfig(tls_ca=tls.ca_cert)                                  # client

The server certificate is valid for "localhost" and 127.0.0.1 (and ::1), so a
client can dial either name without overriding the checked host name.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsFiles:
    """PEM files written by `make_tls_files`."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _builder(subject: str, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
    )


def make_tls_files(
    directory: Path,
    hosts: Sequence[str] = ("localhost",),
    ips: Sequence[str] = ("127.0.0.1", "::1"),
    prefix: str = "",
) -> TlsFiles:
    """Write a CA, a server certificate for `hosts`/`ips` and a client certificate into `directory`.

    `prefix` lets one directory hold several independent sets (e.g. a second, untrusted CA).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    curve = ec.SECP256R1()

    ca_key = ec.generate_private_key(curve)
    ca_name = _name(f"{prefix}distrl test CA")
    ca_cert = (
        _builder(f"{prefix}distrl test CA", ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common_name: str, usage, alt_names: list[x509.GeneralName] | None):
        key = ec.generate_private_key(curve)
        builder = (
            _builder(common_name, ca_name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
            )
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    alt_names: list[x509.GeneralName] = [x509.DNSName(h) for h in hosts]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    server_key, server_cert = leaf(
        hosts[0] if hosts else "server", ExtendedKeyUsageOID.SERVER_AUTH, alt_names
    )
    client_key, client_cert = leaf(f"{prefix}distrl test client", ExtendedKeyUsageOID.CLIENT_AUTH, None)

    return TlsFiles(
        ca_cert=_write_cert(ca_cert, directory / f"{prefix}ca.pem"),
        ca_key=_write_key(ca_key, directory / f"{prefix}ca.key"),
        server_cert=_write_cert(server_cert, directory / f"{prefix}server.pem"),
        server_key=_write_key(server_key, directory / f"{prefix}server.key"),
        client_cert=_write_cert(client_cert, directory / f"{prefix}client.pem"),
        client_key=_write_key(client_key, directory / f"{prefix}client.key"),
    )
