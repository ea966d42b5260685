"""The key material a server needs on its first start, created once and reused afterwards.

`hypermesh up` must work on a fresh machine with no manual certificate steps, and must keep
working across restarts without invalidating the kubeconfigs it already handed out. So the
first call creates a root CA and an intermediate (unless `hypermesh pki init` made them
already, perhaps with the root key offline), a serving certificate and an admin client
certificate under `<data_dir>/pki/`; later calls load them. The serving and admin certificates
are replaced when their renewal time has come (two thirds of their lifetime, as for every
certificate of the cluster, see `hypermesh.pki.renewal`), when they were issued for longer than
the lifetime now asked for (a data dir from before daily rotation), when the intermediate that
signed them was rotated, or (serving) when it does not cover a host the server is now asked to
listen on: clients trust the root, `ca.crt`, never these certificates themselves.

The running server calls `ensure_server_pki` again at `ServerPKI.renewal_time()` (see the
daemon), so both certificates rotate without a restart: a day each by default (`Lifetimes`),
down to seconds for tests. Certificates are back-dated by five minutes for clocks that lag, or
by a tenth of their lifetime when that is shorter, so a short-lived one is not due at once.

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

from hypermesh.pki import files, hierarchy, renewal
from hypermesh.pki.ca import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    CertificateAuthority,
    cert_to_pem,
    generate_key,
    key_to_pem,
)
from hypermesh.pki.profile import LeafRequest

DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost", "::1")
ADMIN_USER = "admin"
ADMIN_GROUP = "system:masters"
SERVER_COMMON_NAME = "hypermesh-apiserver"

DEFAULT_LIFETIME = datetime.timedelta(hours=24)
# Shorter lifetimes only make sense in tests; below this a renewal could not finish in time.
MIN_LIFETIME = datetime.timedelta(seconds=5)
_MAX_BACKDATE = datetime.timedelta(minutes=5)
# A certificate with more validity left than its lifetime plus this was issued under a longer
# lifetime than the one asked for now.
_LIFETIME_SLACK = datetime.timedelta(minutes=1)


@dataclass(frozen=True)
class Lifetimes:
    """How long the server's own certificates live (each renewed at two thirds of it)."""

    serving: datetime.timedelta = DEFAULT_LIFETIME
    admin: datetime.timedelta = DEFAULT_LIFETIME

    def __post_init__(self) -> None:
        for name in ("serving", "admin"):
            value = getattr(self, name)
            if value < MIN_LIFETIME:
                raise ValueError(f"the {name} certificate lifetime {value} is shorter than {MIN_LIFETIME}")


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

    @property
    def server_cert(self) -> x509.Certificate:
        """The serving certificate (the leaf)."""
        return x509.load_pem_x509_certificate(self.server_cert_pem)

    @property
    def admin_cert(self) -> x509.Certificate:
        """The admin client certificate (the leaf)."""
        return x509.load_pem_x509_certificate(self.admin_cert_pem)

    def renewal_time(self) -> datetime.datetime:
        """When the first of the two certificates is due for renewal."""
        return min(_renewal_time(self.server_cert), _renewal_time(self.admin_cert))


def _renewal_time(cert: x509.Certificate) -> datetime.datetime:
    return renewal.renewal_time(cert.not_valid_before_utc, cert.not_valid_after_utc, None)


def _issue(
    ca: CertificateAuthority,
    common_name: str,
    lifetime: datetime.timedelta,
    *,
    organizations: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    usage: str,
) -> tuple[bytes, bytes]:
    """A leaf for a fresh key, living `lifetime`: (chain PEM, key PEM)."""
    request = LeafRequest(
        common_name=common_name,
        organizations=tuple(organizations),
        dns_names=tuple(dns_names),
        ip_addresses=tuple(ip_addresses),
        usages=frozenset({"digital signature", usage}),
        lifetime=lifetime,
        backdate=min(_MAX_BACKDATE, lifetime / 10),
    )
    key = generate_key()
    cert = ca.sign(request, key.public_key())
    return cert_to_pem(cert) + ca.chain_pem, key_to_pem(key)


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


def _still_good(
    cert: x509.Certificate, ca: CertificateAuthority, cert_path: Path, lifetime: datetime.timedelta
) -> bool:
    """True when `cert` was signed by the current issuing CA, its file carries the current
    chain, its renewal time has not come, and it was not issued for longer than `lifetime`."""
    if not ca.issued(cert):
        return False
    try:
        chain = x509.load_pem_x509_certificates(cert_path.read_bytes())[1:]
    except (OSError, ValueError):
        return False
    if tuple(chain) != ca.chain:
        return False
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc - now > lifetime + _LIFETIME_SLACK:
        return False
    return now < _renewal_time(cert)


def _covers_hosts(cert: x509.Certificate, dns_names: list[str], ip_addresses: list[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return not (dns_names or ip_addresses)
    have_dns = set(san.get_values_for_type(x509.DNSName))
    have_ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return set(dns_names) <= have_dns and set(ip_addresses) <= have_ips


def ensure_server_pki(
    data_dir: Path, *, hosts: Sequence[str] = DEFAULT_HOSTS, lifetimes: Lifetimes | None = None
) -> ServerPKI:
    """Create (first call) or load (later calls) `data_dir/pki`; return what it holds,
    renewing the serving and admin certificates that are due (see the module docstring).

    The serving certificate names every entry of `hosts` (IP addresses and DNS names); it is
    reissued when a later call asks for a host it does not cover. Keys are mode 0600 and the
    directory 0700.
    """
    lifetimes = lifetimes or Lifetimes()
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
            or not _still_good(server_cert, ca, server_cert_path, lifetimes.serving)
            or not _covers_hosts(server_cert, dns_names, ip_addresses)
        ):
            cert_pem, key_pem = _issue(
                ca, SERVER_COMMON_NAME, lifetimes.serving,
                dns_names=dns_names, ip_addresses=ip_addresses, usage="server auth",
            )  # fmt: skip
            files.write_private(server_key_path, key_pem)
            files.write_public(server_cert_path, cert_pem)

        admin_cert = _load_pair(admin_cert_path, admin_key_path)
        if admin_cert is None or not _still_good(admin_cert, ca, admin_cert_path, lifetimes.admin):
            cert_pem, key_pem = _issue(
                ca, ADMIN_USER, lifetimes.admin, organizations=[ADMIN_GROUP], usage="client auth"
            )
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
