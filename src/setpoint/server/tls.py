"""A self-signed certificate for a server that has none, so that Kubernetes clients work.

kubectl and every client-go program refuse to send a bearer token over plain HTTP; so
``setpoint serve`` (unless given ``--tls-cert`` or ``--insecure-http``) makes a certificate for its
address, as k3s and kube-apiserver do, and writes it into the kubeconfig as the certificate
authority, so those clients trust it and nobody has to pass ``--insecure-skip-tls-verify``. The
certificate is kept across restarts (clients keep trusting it) and made again only when it does
not cover the address listened on or is about to expire.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def ensure_self_signed(data_dir: Path, host: str) -> tuple[Path, Path]:
    """DATA_DIR/tls.crt and tls.key, made if missing, valid for ``host``, localhost and loopback."""
    cert_path, key_path = data_dir / "tls.crt", data_dir / "tls.key"
    names = _names(host)
    if cert_path.exists() and key_path.exists() and _still_good(cert_path, names):
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "setpoint")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName("localhost"),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                     x509.IPAddress(ipaddress.ip_address("::1"))]
    try:
        addr = ipaddress.ip_address(host)
        if not addr.is_loopback and not addr.is_unspecified:
            names.append(x509.IPAddress(addr))
    except ValueError:
        if host != "localhost":
            names.append(x509.DNSName(host))
    return names


def _still_good(cert_path: Path, names: list[x509.GeneralName]) -> bool:
    """The certificate covers every name and is valid for at least another day."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    return all(n in have for n in names) and cert.not_valid_after_utc > soon
