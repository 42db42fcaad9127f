"""The front's certificate, decided on the controller (pure: no pyinfra import).

Either the user's own certificate and key (checked: they match, the certificate is in its
validity period), or one issued by the deployment's CA, which the controller keeps in
`serve_expose_secrets_dir`: clients pin its `ca.crt`; `ca.key` never leaves the controller.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from autoglm_infra.common.lazy_import import lazy_module
from autoglm_infra.common.secrets import SecretError, read_secret

if TYPE_CHECKING:
    from cryptography import x509
else:  # X.509 only when a TLS front is wanted: 10-15 ms of every converge otherwise
    x509 = lazy_module("cryptography.x509")

CA_DAYS = 3650
SERVER_DAYS = 397  # what browsers accept for public certificates; renewed within 30 days
RENEW_DAYS = 30


class TlsError(ValueError):
    """A certificate problem; `key` names the setting to fix."""

    def __init__(self, key: str, reason: str) -> None:
        self.key, self.reason = key, reason
        super().__init__(f"{key}: {reason}")


@dataclass(frozen=True)
class ServerPair:
    cert_pem: bytes  # the chain nginx serves
    key_pem: bytes
    source: str  # for messages: the user's file or the CA's


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _public(key: object) -> bytes:
    public = key.public_key()  # type: ignore[attr-defined]
    return bytes(
        public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def load_user_pair(cert_file: str, key_file: str, now: dt.datetime | None = None) -> ServerPair:
    """The user's certificate chain and key, refused unless they match and are valid now."""
    now = now or _now()
    cert_path = Path(cert_file).expanduser()
    try:
        chain_pem = cert_path.read_bytes()
        chain = x509.load_pem_x509_certificates(chain_pem)
    except OSError as exc:
        raise TlsError(
            "serve_expose_cert_file", f"{cert_path} cannot be read: {exc.strerror}"
        ) from None
    except ValueError:
        raise TlsError("serve_expose_cert_file", f"{cert_path} holds no PEM certificate") from None
    try:
        secret = read_secret("", key_file, environ={})  # the mode check of every secret file
    except SecretError as exc:
        raise TlsError("serve_expose_key_file", str(exc)) from None
    assert secret is not None
    key_pem = (secret.reveal() + "\n").encode()
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise TlsError(
            "serve_expose_key_file",
            f"{secret.source} holds no unencrypted PEM private key (nginx cannot ask for a "
            "passphrase)",
        ) from None
    leaf = chain[0]
    if _public(private) != _public(leaf):
        raise TlsError(
            "serve_expose_key_file",
            f"{secret.source} is not the key of the certificate in {cert_path} "
            "(their public keys differ); give the matching pair",
        )
    if leaf.not_valid_after_utc <= now:
        raise TlsError(
            "serve_expose_cert_file",
            f"{cert_path} expired on {leaf.not_valid_after_utc:%Y-%m-%d}; renew it",
        )
    if leaf.not_valid_before_utc > now:
        raise TlsError(
            "serve_expose_cert_file",
            f"{cert_path} is valid only from {leaf.not_valid_before_utc:%Y-%m-%d}",
        )
    return ServerPair(chain_pem, key_pem, str(cert_path))


def _write_private(path: Path, data: bytes) -> None:
    """Create `path` 0600 from birth (never a moment world-readable); replace atomically."""
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    tmp.replace(path)


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(path: Path, setting: str) -> ec.EllipticCurvePrivateKey:
    try:
        secret = read_secret("", str(path), environ={})
    except SecretError as exc:
        raise TlsError(setting, str(exc)) from None
    assert secret is not None
    try:
        key = serialization.load_pem_private_key(secret.reveal().encode(), password=None)
    except (ValueError, TypeError):
        raise TlsError(setting, f"{path} holds no readable private key; move it away") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TlsError(setting, f"{path} is not an EC key this project made; move it away")
    return key


CaPair = tuple["x509.Certificate", ec.EllipticCurvePrivateKey]


def _load_cert(path: Path, setting: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise TlsError(
            setting, f"{path} holds no readable certificate ({exc}); move it away"
        ) from None


def ensure_ca(secrets_dir: str, now: dt.datetime | None = None, write: bool = True) -> CaPair:
    """The deployment's CA (made once): ca.crt to pin, ca.key (0600) kept here.
    `write=False` (a --dry preview): a missing CA is made in memory only."""
    base = Path(secrets_dir).expanduser()
    if write:
        private_dir(base)
    cert_path, key_path = base / "ca.crt", base / "ca.key"
    if key_path.exists() and cert_path.exists():
        key = _load_key(key_path, "serve_expose_secrets_dir")
        cert = _load_cert(cert_path, "serve_expose_secrets_dir")
        if _public(key) != _public(cert):
            raise TlsError(
                "serve_expose_secrets_dir", f"{cert_path} is not the certificate of {key_path}"
            )
        return cert, key
    if key_path.exists() or cert_path.exists():  # never replace half a CA that clients pin
        have, missing = (key_path, cert_path) if key_path.exists() else (cert_path, key_path)
        raise TlsError(
            "serve_expose_secrets_dir",
            f"{have} exists but {missing} does not: restore it from your backup (clients pin "
            f"this CA), or move {have} away to have a new CA made",
        )
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "autoglm-infra deployment CA")]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    if not write:
        return cert, key
    # the certificate first, the key last: an interrupted run leaves only ca.crt (refused
    # above, with the fix) and never a key whose certificate was lost
    partial = cert_path.with_name(cert_path.name + ".partial")
    partial.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    partial.replace(cert_path)
    _write_private(key_path, _key_pem(key))
    return cert, key


def subject_names(names: list[str]) -> list[x509.GeneralName]:
    """IP SANs for addresses, DNS SANs for the rest (unspecified addresses dropped)."""
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            address = ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            out.append(x509.DNSName(name))
            continue
        if not address.is_unspecified:
            out.append(x509.IPAddress(address))
    return out


def _still_good(
    cert: x509.Certificate, ca: x509.Certificate, wanted: list[x509.GeneralName], now: dt.datetime
) -> bool:
    if cert.issuer != ca.subject or cert.not_valid_after_utc - now < dt.timedelta(RENEW_DAYS):
        return False
    try:
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False
    return set(sans) == set(wanted)


def issued_pair(
    secrets_dir: str,
    host_name: str,
    names: list[str],
    now: dt.datetime | None = None,
    write: bool = True,
) -> ServerPair:
    """The host's certificate from the deployment's CA: reused while it is good (same CA,
    same names, more than 30 days left), else issued anew; stored under hosts/.
    `write=False` (a --dry preview): what would be issued, in memory only."""
    now = now or _now()
    ca_cert, ca_key = ensure_ca(secrets_dir, now, write)
    hosts = Path(secrets_dir).expanduser() / "hosts"
    if write:
        private_dir(hosts)
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in host_name)
    cert_path, key_path = hosts / f"{safe}.crt", hosts / f"{safe}.key"
    wanted = subject_names(names)
    if not wanted:
        raise TlsError(
            "serve_expose",
            f"no address or name to certify for {host_name}: give serve_expose a specific "
            "address, or name the host by its address or DNS name in the inventory",
        )
    if cert_path.exists() and key_path.exists():
        key = _load_key(key_path, "serve_expose_secrets_dir")
        cert = _load_cert(cert_path, "serve_expose_secrets_dir")
        if _public(key) == _public(cert) and _still_good(cert, ca_cert, wanted, now):
            return ServerPair(cert_path.read_bytes(), key_path.read_bytes(), "the deployment CA")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, host_name[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(wanted), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_pem, key_pem = cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)
    if write:
        _write_private(key_path, key_pem)
        cert_path.write_bytes(cert_pem)
    return ServerPair(cert_pem, key_pem, "the deployment CA")


def days_left(cert_pem: bytes, now: dt.datetime | None = None) -> float:
    """Days until the first certificate in `cert_pem` expires (negative: expired)."""
    cert = x509.load_pem_x509_certificates(cert_pem)[0]
    return (cert.not_valid_after_utc - (now or _now())).total_seconds() / 86400
