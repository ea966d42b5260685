"""The key material a server needs on its first start, created once and reused afterwards.

`hypermesh up` must work on a fresh machine with no manual certificate steps, and must keep
working across restarts without invalidating the kubeconfigs it already handed out. So the
first call creates a root CA and an intermediate (unless `hypermesh pki init` made them
already, perhaps with the root key offline), a serving certificate and an admin client
certificate under `<data_dir>/pki/`; later calls load them. The serving and admin certificates
are replaced automatically when they are about to expire, when the intermediate that signed
them was rotated, or (serving) when it does not cover a host the server is now asked to listen
on: clients trust the root, `ca.crt`, never these certificates themselves.

`server.crt` and `admin.crt` hold the leaf followed by the intermediate, so the TLS listeners
(which load the whole file) send the chain, and so does every client of the admin kubeconfig.
A data dir made before intermediates keeps its single CA (see `hypermesh.pki.ca`).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hypermesh.pki import files, hierarchy
from hypermesh.pki.ca import CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority

DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
ADMIN_USER = "admin"
ADMIN_GROUP = "system:masters"
SERVER_COMMON_NAME = "hypermesh-apiserver"

# A certificate closer than this to its expiry is replaced at the next start.
_RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class ServerPKI:
    """Paths and contents of a server's CA, serving certificate and admin certificate.

    `ca` is the issuing CA (the intermediate); `ca_pem` is the root, the trust anchor. The
    certificate PEMs are chains (leaf, then intermediate). `ca_key_path` names the root key,
    which does not exist when the root is kept offline."""

    directory: Path
    ca: CertificateAuthority
    ca_cert_path: Path
    ca_key_path: Path
    server_cert_path: Path
    server_key_path: Path
    admin_cert_path: Path
    admin_key_path: Path
    ca_pem: bytes
    server_cert_pem: bytes
    server_key_pem: bytes
    admin_cert_pem: bytes
    admin_key_pem: bytes


def _split_hosts(hosts: Sequence[str]) -> tuple[list[str], list[str]]:
    dns_names: list[str] = []
    ip_addresses: list[str] = []
    for host in hosts:
        try:
            ip_addresses.append(str(ipaddress.ip_address(host)))
        except ValueError:
            dns_names.append(host)
    return dns_names, ip_addresses


def _load_pair(cert_path: Path, key_path: Path) -> x509.Certificate | None:
    """Return the certificate at `cert_path` if it exists and matches the key at `key_path`."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    except (OSError, ValueError, TypeError):
        return None
    # A crash between writing a new key and its certificate leaves a mismatched pair behind.
    return cert if key.public_key() == cert.public_key() else None


def _still_good(cert: x509.Certificate, ca: CertificateAuthority, cert_path: Path) -> bool:
    """True when `cert` was signed by the current issuing CA, its file carries the current
    chain, and it is not close to expiring."""
    if not ca.issued(cert):
        return False
    try:
        chain = x509.load_pem_x509_certificates(cert_path.read_bytes())[1:]
    except (OSError, ValueError):
        return False
    if tuple(chain) != ca.chain:
        return False
    now = datetime.datetime.now(datetime.UTC)
    return cert.not_valid_after_utc - now > _RENEW_BEFORE


def _covers_hosts(cert: x509.Certificate, dns_names: list[str], ip_addresses: list[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return not (dns_names or ip_addresses)
    have_dns = set(san.get_values_for_type(x509.DNSName))
    have_ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return set(dns_names) <= have_dns and set(ip_addresses) <= have_ips


def ensure_server_pki(data_dir: Path, *, hosts: Sequence[str] = DEFAULT_HOSTS) -> ServerPKI:
    """Create (first call) or load (later calls) `data_dir/pki`; return what it holds.

    The serving certificate names every entry of `hosts` (IP addresses and DNS names); it is
    reissued when a later call asks for a host it does not cover. Keys are mode 0600 and the
    directory 0700.
    """
    directory = Path(data_dir) / "pki"
    files.ensure_private_dir(directory)
    dns_names, ip_addresses = _split_hosts(hosts)
    server_cert_path = directory / "server.crt"
    server_key_path = directory / "server.key"
    admin_cert_path = directory / "admin.crt"
    admin_key_path = directory / "admin.key"

    with files.locked(directory):
        ca = hierarchy.ensure_issuer(directory)

        server_cert = _load_pair(server_cert_path, server_key_path)
        if (
            server_cert is None
            or not _still_good(server_cert, ca, server_cert_path)
            or not _covers_hosts(server_cert, dns_names, ip_addresses)
        ):
            cert_pem, key_pem = ca.issue(
                SERVER_COMMON_NAME, dns_names=dns_names, ip_addresses=ip_addresses, server=True
            )
            files.write_private(server_key_path, key_pem)
            files.write_public(server_cert_path, cert_pem)

        admin_cert = _load_pair(admin_cert_path, admin_key_path)
        if admin_cert is None or not _still_good(admin_cert, ca, admin_cert_path):
            cert_pem, key_pem = ca.issue(ADMIN_USER, organizations=[ADMIN_GROUP], client=True)
            files.write_private(admin_key_path, key_pem)
            files.write_public(admin_cert_path, cert_pem)

    return ServerPKI(
        directory=directory,
        ca=ca,
        ca_cert_path=directory / CA_CERT_FILE,
        ca_key_path=directory / CA_KEY_FILE,
        server_cert_path=server_cert_path,
        server_key_path=server_key_path,
        admin_cert_path=admin_cert_path,
        admin_key_path=admin_key_path,
        ca_pem=ca.cert_pem,
        server_cert_pem=server_cert_path.read_bytes(),
        server_key_pem=server_key_path.read_bytes(),
        admin_cert_pem=admin_cert_path.read_bytes(),
        admin_key_pem=admin_key_path.read_bytes(),
    )
