"""The cluster's certificate authorities: an offline-capable root and the intermediate that signs.

HyperMesh authenticates clients the way Kubernetes does with x509 client certificates: the
subject's common name is the user and its organizations are the groups. Whoever holds a key
that chains to the cluster's root can therefore mint any identity, `system:masters` included.
Two levels keep that power small and replaceable:

- the root (`ca.crt`, key `ca.key`) signs only intermediates. Its key may live offline
  (`hypermesh pki init --root-out DIR`), so a stolen data directory cannot mint a new
  intermediate. `ca.crt` stays the trust anchor every verifier and kubeconfig loads, so
  rotating the intermediate changes nothing a client holds.
- the intermediate (`intermediate.pem`: certificate then key, mode 0600, replaced atomically as
  one file so a rotation is all-or-nothing even for a running server that reloads it) signs
  every leaf. Its path length is 0: nothing it signs can sign in turn.

Every leaf is handed out with its chain (leaf, then intermediate): TLS stacks send what the
certificate file holds, and verifiers build the path to `ca.crt` from it.

A data directory made before intermediates existed holds one self-signed CA with path length 0.
RFC 5280 forbids that CA to have an intermediate below it (OpenSSL, Go and cryptography all
enforce the root's path length), and re-issuing it with a longer path would change `ca.crt`
and break every kubeconfig that embeds it. Such a CA therefore keeps signing leaves itself
(`CertificateAuthority.is_root`); `hypermesh pki rotate-intermediate` says so instead of
producing a chain no verifier accepts.

Certificates follow the WebPKI profile closely enough that `cryptography`'s strict verifier
accepts them (critical basic constraints and key usage, subject and authority key identifiers,
extended key usage), because the HTTP/3 listener relies on that verifier (see `verify`).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hypermesh.pki import files, keys, profile
from hypermesh.pki.profile import LeafRequest

# Certificates are back-dated a little so a client whose clock runs slightly behind still
# accepts a certificate issued a moment ago.
_CLOCK_SKEW = datetime.timedelta(minutes=5)
ROOT_VALIDITY_DAYS = 3650
INTERMEDIATE_VALIDITY_DAYS = 1825
CA_VALIDITY_DAYS = ROOT_VALIDITY_DAYS

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
INTERMEDIATE_FILE = "intermediate.pem"

PrivateKey = ec.EllipticCurvePrivateKey


class LegacyRootError(ValueError):
    """The root is a pre-intermediate CA (path length 0) that cannot sign an intermediate."""


def generate_key() -> ec.EllipticCurvePrivateKey:
    """Return a new ECDSA P-256 private key (the cluster's own certificates use these)."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: keys.PrivateKey) -> bytes:
    """Serialize a private key as unencrypted PKCS#8 PEM (what Go, OpenSSL and Python read)."""
    return keys.to_pem(key)


def cert_to_pem(cert: x509.Certificate) -> bytes:
    """Serialize a certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM)


def certs_to_pem(certs: Sequence[x509.Certificate]) -> bytes:
    """Serialize certificates as concatenated PEM (a chain file: leaf first)."""
    return b"".join(cert_to_pem(cert) for cert in certs)


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _subject(common_name: str, organizations: Sequence[str]) -> x509.Name:
    # Kubernetes reads every O attribute as a group, so each organization becomes its own
    # attribute rather than one joined string.
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    if common_name:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _subject_alt_names(request: LeafRequest) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in request.dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in request.ip_addresses]
    names += [x509.UniformResourceIdentifier(uri) for uri in request.uris]
    return names


def _ski(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public_key = cert.public_key()
        return x509.SubjectKeyIdentifier.from_public_key(public_key)  # type: ignore[arg-type]


def _path_length(cert: x509.Certificate) -> int | None:
    return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _read_pair(cert_path: Path, key_path: Path) -> tuple[x509.Certificate, keys.PrivateKey]:
    """A certificate and its key from two files (or one, when the paths are equal)."""
    cert_data = cert_path.read_bytes()
    key_data = cert_data if key_path == cert_path else key_path.read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(cert_data)
    except ValueError as exc:
        raise ValueError(f"{cert_path}: not a readable PEM certificate ({exc})") from None
    key = keys.load_pem(key_data, source=str(key_path))
    if key.public_key() != cert.public_key():
        raise ValueError(f"{key_path.name} does not match {cert_path.name} in {cert_path.parent}")
    return cert, key


class RootCA:
    """The trust anchor: a self-signed CA whose key signs intermediates and nothing else."""

    def __init__(self, cert: x509.Certificate, key: keys.PrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def generate(cls, common_name: str = "hypermesh-ca") -> RootCA:
        """A new root in memory (nothing is written); path length 1 (root, intermediate, leaf)."""
        key = generate_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + datetime.timedelta(days=ROOT_VALIDITY_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, keys.signature_hash(key))
        )
        return cls(cert, key)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> RootCA:
        """The root stored as `ca.crt` and `ca.key` in `directory` (a data dir's pki/ or the
        offline directory given to `hypermesh pki init --root-out`)."""
        path = Path(directory)
        key_path = path / CA_KEY_FILE
        if not key_path.exists():
            raise FileNotFoundError(
                f"{key_path} does not exist: the root key is kept offline; pass the directory "
                "that holds it (the --root-out of `hypermesh pki init`)"
            )
        cert, key = _read_pair(path / CA_CERT_FILE, key_path)
        return cls(cert, key)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write `ca.key` (0600) and `ca.crt` into `directory` (made 0700)."""
        path = Path(directory)
        files.ensure_private_dir(path)
        files.write_private(path / CA_KEY_FILE, key_to_pem(self.key))
        files.write_public(path / CA_CERT_FILE, self.cert_pem)

    @property
    def cert_pem(self) -> bytes:
        """The root certificate as PEM: the trust anchor."""
        return cert_to_pem(self.cert)

    @property
    def can_sign_intermediates(self) -> bool:
        """False for a pre-intermediate CA (path length 0)."""
        length = _path_length(self.cert)
        return length is None or length >= 1

    def new_intermediate(
        self, *, days: int = INTERMEDIATE_VALIDITY_DAYS, common_name: str | None = None
    ) -> CertificateAuthority:
        """A fresh intermediate (new key) signed by this root, in memory."""
        if not self.can_sign_intermediates:
            raise LegacyRootError(
                f"the root {self.cert.subject.rfc4514_string()!r} has path length 0 (it was "
                "created before HyperMesh used intermediates): every verifier would reject an "
                "intermediate signed by it, so it keeps signing certificates itself. To move to "
                "a root and intermediate, create a new cluster PKI with `hypermesh pki init` "
                "and hand out new kubeconfigs."
            )
        key = generate_key()
        now = _now()
        root_cn = self.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        base = str(root_cn[0].value) if root_cn else "hypermesh"
        # A dated name tells rotations apart in `openssl x509 -text` and in error messages.
        name = common_name or f"{base} intermediate {now:%Y-%m-%d %H:%M:%S}"
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(
                min(now + datetime.timedelta(days=days), self.cert.not_valid_after_utc)
            )
            # Path length 0: the intermediate signs leaves only, so a leaf key can never mint
            # certificates that chain to the root.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(self.cert)),
                critical=False,
            )
            .sign(self.key, keys.signature_hash(self.key))
        )
        return CertificateAuthority(cert, key, root=self.cert)


class CertificateAuthority:
    """The issuing CA: signs leaves and hands out the chain that ties them to the root.

    `cert`/`key` sign; `root` is the trust anchor (the same certificate for a pre-intermediate
    CA); `chain` is what follows a leaf in its certificate file.
    """

    def __init__(
        self,
        cert: x509.Certificate,
        key: keys.PrivateKey,
        *,
        root: x509.Certificate | None = None,
    ) -> None:
        self.cert = cert
        self.key = key
        self.root = root if root is not None else cert
        self.chain: tuple[x509.Certificate, ...] = () if self.root == cert else (cert,)

    # Construction

    @classmethod
    def generate(cls, common_name: str = "hypermesh-ca") -> CertificateAuthority:
        """A new root and intermediate in memory; returns the intermediate (the root's key is
        dropped: nothing more can be signed by it)."""
        return RootCA.generate(common_name).new_intermediate()

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], common_name: str = "hypermesh-ca"
    ) -> CertificateAuthority:
        """Create a root (`ca.crt`, `ca.key`) and an intermediate (`intermediate.pem`) in
        directory `path`; return the intermediate."""
        root = RootCA.generate(common_name)
        ca = root.new_intermediate()
        root.save(path)
        ca.save(path)
        return ca

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CertificateAuthority:
        """The issuing CA stored in directory `path`: its intermediate, or the CA itself for a
        directory made before intermediates (see the module docstring)."""
        directory = Path(path)
        root_path = directory / CA_CERT_FILE
        intermediate_path = directory / INTERMEDIATE_FILE
        root_data = root_path.read_bytes()
        try:
            root = x509.load_pem_x509_certificate(root_data)
        except ValueError as exc:
            raise ValueError(f"{root_path}: not a readable PEM certificate ({exc})") from None
        key_path = directory / CA_KEY_FILE
        if intermediate_path.exists():
            cert, key = _read_pair(intermediate_path, intermediate_path)
            if key_path.exists():
                # Not needed to sign, but a mismatched root key is a broken directory.
                _read_pair(root_path, key_path)
            try:
                cert.verify_directly_issued_by(root)
            except (ValueError, TypeError, InvalidSignature):
                raise ValueError(
                    f"{intermediate_path} is not signed by the root in {root_path}: run "
                    "`hypermesh pki rotate-intermediate` with this cluster's root"
                ) from None
            return cls(cert, key, root=root)
        if _path_length(root) == 0:
            cert, key = _read_pair(root_path, key_path)
            return cls(cert, key)
        raise FileNotFoundError(
            f"{intermediate_path} does not exist (its root in {root_path} signs intermediates "
            "only): run `hypermesh pki rotate-intermediate`"
        )

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> CertificateAuthority:
        """Load the CA in `path`; create a root and intermediate first when there is none, and
        an intermediate when only a root with its key is there (an interrupted create)."""
        directory = Path(path)
        if not (directory / CA_CERT_FILE).exists():
            return cls.create(directory)
        if not (directory / INTERMEDIATE_FILE).exists() and (directory / CA_KEY_FILE).exists():
            root = RootCA.load(directory)
            if root.can_sign_intermediates:
                ca = root.new_intermediate()
                ca.save(directory)
                return ca
        return cls.load(directory)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write this intermediate as `intermediate.pem` (certificate then key, 0600)."""
        if self.is_root:
            raise ValueError("save(): only an intermediate is stored as intermediate.pem")
        path = Path(directory)
        files.ensure_private_dir(path)
        files.write_private(path / INTERMEDIATE_FILE, cert_to_pem(self.cert) + key_to_pem(self.key))

    # What verifiers need

    @property
    def is_root(self) -> bool:
        """True for a pre-intermediate CA that signs with the root itself."""
        return self.cert == self.root

    @property
    def cert_pem(self) -> bytes:
        """The root certificate as PEM: the trust anchor clients and servers load (`ca.crt`)."""
        return cert_to_pem(self.root)

    @property
    def chain_pem(self) -> bytes:
        """The CA certificates that follow a leaf in its certificate file (empty for a
        pre-intermediate CA)."""
        return certs_to_pem(self.chain)

    def issued(self, cert: x509.Certificate) -> bool:
        """Whether `cert` was signed by this CA's key (not merely by a CA of the same name)."""
        if cert.issuer != self.cert.subject:
            return False
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    # Issuing

    def sign(
        self,
        request: LeafRequest,
        public_key: keys.PublicKey,
        *,
        now: datetime.datetime | None = None,
    ) -> x509.Certificate:
        """Sign a leaf for `public_key` saying what `request` says.

        The leaf never outlives this CA (it would fail verification anyway). A request with
        neither a common name nor a subject alternative name is refused: such a certificate
        names nobody.
        """
        names = _subject_alt_names(request)
        if not request.common_name and not names:
            raise ValueError(
                "a certificate needs a common name or at least one DNS name, IP address or URI"
            )
        now = now or _now()
        not_after = min(now + request.lifetime, self.cert.not_valid_after_utc)
        if not_after <= now:
            raise ValueError(
                f"the issuing CA {self.cert.subject.rfc4514_string()!r} expired at "
                f"{self.cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}: rotate the intermediate"
            )
        subject = _subject(request.common_name, request.organizations)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - request.backdate)
            .not_valid_after(not_after)
            .add_extension(
                x509.BasicConstraints(ca=request.is_ca, path_length=0 if request.is_ca else None),
                critical=True,
            )
            .add_extension(profile.key_usage_extension(request.usages), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(_ski(self.cert)),
                critical=False,
            )
        )
        extended = profile.extended_key_usages(request.usages)
        if extended:
            builder = builder.add_extension(x509.ExtendedKeyUsage(extended), critical=False)
        if names:
            # RFC 5280 4.2.1.6: with an empty subject the names are the identity, so critical.
            builder = builder.add_extension(
                x509.SubjectAlternativeName(names), critical=not subject
            )
        return builder.sign(self.key, keys.signature_hash(self.key))

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
        """Issue a leaf certificate with a fresh ECDSA P-256 key; return `(cert_pem, key_pem)`
        where `cert_pem` is the chain (leaf, then this CA's chain), ready for a TLS stack.

        `client` and `server` choose the extended key usages; at least one is required
        because a certificate good for nothing is always a mistake.
        """
        if not (client or server):
            raise ValueError("issue(): pass client=True and/or server=True")
        if not common_name:
            raise ValueError("issue(): common_name must not be empty (it is the user name)")
        usages = {"digital signature"}
        if client:
            usages.add("client auth")
        if server:
            usages.add("server auth")
        request = LeafRequest(
            common_name=common_name,
            organizations=tuple(organizations),
            dns_names=tuple(dns_names),
            ip_addresses=tuple(ip_addresses),
            usages=frozenset(usages),
            lifetime=datetime.timedelta(days=days),
            backdate=_CLOCK_SKEW,
        )
        key = generate_key()
        cert = self.sign(request, key.public_key())
        return cert_to_pem(cert) + self.chain_pem, key_to_pem(key)


__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "INTERMEDIATE_FILE",
    "CertificateAuthority",
    "LegacyRootError",
    "RootCA",
    "cert_to_pem",
    "certs_to_pem",
    "generate_key",
    "key_to_pem",
]
