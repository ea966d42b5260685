"""The cluster's certificate authority: one self-signed ECDSA key that signs every certificate.

HyperMesh authenticates clients the way Kubernetes does with x509 client certificates: the
subject's common name is the user and its organizations are the groups. The CA is therefore
the root of all authority in a cluster, and its key never leaves `ca.key` (mode 0600).

Certificates follow the WebPKI profile closely enough that `cryptography`'s strict verifier
accepts them (critical basic constraints and key usage, subject and authority key
identifiers, extended key usage). The HTTP/3 listener relies on that verifier to check client
chains itself, because aioquic does not.

ECDSA P-256 is the default: its keys sign fast, its certificates are small (which matters for
QUIC, whose first flight is limited by the anti-amplification rule), and every TLS stack
including kubectl's Go stack speaks it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hypermesh.pki import files

# Certificates are back-dated a little so a client whose clock runs slightly behind still
# accepts a certificate issued a moment ago.
_CLOCK_SKEW = datetime.timedelta(minutes=5)
CA_VALIDITY_DAYS = 3650

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"

PrivateKey = ec.EllipticCurvePrivateKey


def generate_key() -> PrivateKey:
    """Return a new ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: PrivateKey) -> bytes:
    """Serialize a private key as unencrypted PKCS#8 PEM (what Go, OpenSSL and Python read)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_to_pem(cert: x509.Certificate) -> bytes:
    """Serialize a certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_usage(*, digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _subject(common_name: str, organizations: Sequence[str]) -> x509.Name:
    # Kubernetes reads every O attribute as a group, so each organization becomes its own
    # attribute rather than one joined string.
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _subject_alt_names(
    dns_names: Sequence[str], ip_addresses: Sequence[str]
) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    return names


class CertificateAuthority:
    """A CA key and certificate that issue client and server certificates."""

    def __init__(self, cert: x509.Certificate, key: PrivateKey) -> None:
        self.cert = cert
        self.key = key

    # Construction

    @classmethod
    def generate(cls, common_name: str = "hypermesh-ca") -> CertificateAuthority:
        """Create a new CA in memory (nothing is written)."""
        key = generate_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=CA_VALIDITY_DAYS))
            # Path length 0: the CA signs leaves only, so a leaf key can never mint certificates.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(digital_signature=True, cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], common_name: str = "hypermesh-ca"
    ) -> CertificateAuthority:
        """Create a new CA and store it as `ca.crt` and `ca.key` (0600) in directory `path`."""
        directory = Path(path)
        files.ensure_private_dir(directory)
        ca = cls.generate(common_name)
        files.write_private(directory / CA_KEY_FILE, key_to_pem(ca.key))
        files.write_public(directory / CA_CERT_FILE, ca.cert_pem)
        return ca

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CertificateAuthority:
        """Load the CA stored in directory `path` by `create`."""
        directory = Path(path)
        cert = x509.load_pem_x509_certificate((directory / CA_CERT_FILE).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY_FILE).read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{directory / CA_KEY_FILE}: expected an ECDSA key, got {type(key)}")
        if key.public_key() != cert.public_key():
            raise ValueError(f"{directory}: {CA_KEY_FILE} does not match {CA_CERT_FILE}")
        return cls(cert, key)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> CertificateAuthority:
        """Load the CA in `path`, creating it first when there is none."""
        if (Path(path) / CA_CERT_FILE).exists():
            return cls.load(path)
        return cls.create(path)

    # Issuing

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate as PEM: the trust anchor clients and servers load."""
        return cert_to_pem(self.cert)

    def issue(
        self,
        common_name: str,
        *,
        organizations: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        client: bool = False,
        server: bool = False,
        days: int = 365,
    ) -> tuple[bytes, bytes]:
        """Issue a leaf certificate with a fresh key; return `(cert_pem, key_pem)`.

        `client` and `server` choose the extended key usages; at least one is required
        because a certificate good for nothing is always a mistake.
        """
        if not (client or server):
            raise ValueError("issue(): pass client=True and/or server=True")
        if not common_name:
            raise ValueError("issue(): common_name must not be empty (it is the user name)")
        key = generate_key()
        now = datetime.datetime.now(datetime.UTC)
        not_after = min(
            now + datetime.timedelta(days=days),
            # A leaf outliving its CA would fail verification anyway; clamp it.
            self.cert.not_valid_after_utc,
        )
        usages = []
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(_subject(common_name, organizations))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True, cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
        )
        alt_names = _subject_alt_names(dns_names, ip_addresses)
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert_to_pem(cert), key_to_pem(key)
