"""HTTPS and password authentication of the stand-in, as a Presto coordinator configures them.

A real Presto with users is reached over HTTPS with HTTP basic authentication
(``http-server.authentication.type=PASSWORD``, https://prestodb.io/docs/current/security/
password-file.html); the Python client refuses to send a password over plain HTTP
(``prestodb/client.py``: ``cannot use authentication with HTTP``). The stand-in therefore serves
TLS whenever it has users, with a self-signed certificate made at start for ``127.0.0.1`` and
``localhost``; clients trust it through its PEM file (``ca_path``), which is what a Presto
connection's ``verify`` extra points at.

Answers follow prestodb's ``PasswordAuthenticator`` and ``AuthenticationFilter``
(``presto-main/src/main/java/com/facebook/presto/server/security/``): every request needs
``Authorization: Basic ...``; a missing one is ``401 Unauthorized`` with
``WWW-Authenticate: Basic realm="Presto"``, undecodable ones ``Invalid base64 encoded
credentials`` / ``Malformed decoded credentials``, a wrong user or password ``Access Denied:
Invalid credentials`` (the file authenticator's message). Passwords are never logged.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import ipaddress
import os
import ssl
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REALM_CHALLENGE = 'Basic realm="Presto"'
USERS_ENV = "PRESTO_STANDIN_USERS"


class AuthenticationFailed(Exception):
    """A request without valid credentials; the message is the 401 body."""


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """Write a new self-signed certificate (``ca.pem``) and its key (``key.pem``, mode 0600).

    The certificate is its own CA (basic constraints CA, key usage ``keyCertSign``) so that TLS
    clients can use the PEM file as their trust store; it names ``localhost`` and ``127.0.0.1``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "presto-standin")])
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "ca.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


def server_context(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 or newer) for the certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    return context


def authenticate(header: str | None, users: Mapping[str, str]) -> str:
    """Return the user of a valid ``Authorization: Basic`` header; raise
    :class:`AuthenticationFailed` with Presto's message otherwise."""
    scheme, _, encoded = (header or "").partition(" ")
    if not encoded or scheme.lower() != "basic":
        raise AuthenticationFailed("Unauthorized")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("iso-8859-1")
    except (binascii.Error, ValueError):
        raise AuthenticationFailed("Invalid base64 encoded credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep or not user or not password:
        raise AuthenticationFailed("Malformed decoded credentials")
    expected = users.get(user)
    # Constant-time comparison; an unknown user is checked against itself to take the same time.
    if not hmac.compare_digest(password.encode(), (expected or password).encode()) or not expected:
        raise AuthenticationFailed("Access Denied: Invalid credentials")
    return user


def users_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Users from ``PRESTO_STANDIN_USERS`` (``user:password`` pairs separated by commas).

    Read from the environment rather than the command line so passwords do not show in ``ps``.
    """
    users = {}
    for item in filter(None, (p.strip() for p in environ.get(USERS_ENV, "").split(","))):
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise ValueError(
                f"{USERS_ENV}: expected user:password pairs, got an entry for {user!r}"
            )
        users[user] = password
    return users
