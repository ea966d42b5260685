"""The `Signer`: what a controller is given to issue certificates, instead of a CA directory.

The Certificate controller runs inside the server process and signs with the intermediate in
`<data dir>/pki`, and so does the csrsigning controller, which signs keys nodes hold (`sign`,
for a CertificateSigningRequest's public key); a test hands it a CA made in memory. Both are a
`Signer`, so the controller never learns where keys live. A directory-backed signer re-reads `intermediate.pem` (and
`ca.crt`) when the files change, so `hypermesh pki rotate-intermediate` takes effect on a
running server without a restart: the next issuance uses the new intermediate, and the
controller re-issues every certificate the old one signed (`problem_with` says why).

Signing is CPU work (an RSA 4096 key takes around a second to generate), so callers on an
event loop run `issue` in a thread; the signer is safe to share between threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from hypermesh.pki import keys
from hypermesh.pki.ca import CA_CERT_FILE, INTERMEDIATE_FILE, CertificateAuthority, cert_to_pem
from hypermesh.pki.profile import LeafRequest


class SigningError(Exception):
    """The issuing CA cannot sign now (missing or unreadable files, expired, bad request)."""


@dataclass(frozen=True)
class Issued:
    """A freshly signed certificate in the three forms a TLS Secret holds."""

    certificate: x509.Certificate
    # tls.crt: the leaf, then the intermediate, so a TLS peer can build the path to the root.
    cert_pem: bytes
    # tls.key
    key_pem: bytes
    # ca.crt: the root, the one certificate a peer should trust.
    ca_pem: bytes


class Signer:
    """Issues leaf certificates from the current issuing CA."""

    def __init__(self, load: Callable[[], CertificateAuthority], *, where: str) -> None:
        self._load = load
        self.where = where
        self._lock = threading.Lock()
        self._cached: CertificateAuthority | None = None
        self._version: object = None
        self._version_of: Callable[[], object] = lambda: None

    @classmethod
    def from_authority(cls, ca: CertificateAuthority) -> Signer:
        """A signer that always uses `ca` (tests, embedded servers)."""
        return cls(lambda: ca, where="an in-memory CA")

    @classmethod
    def from_directory(cls, directory: str | os.PathLike[str]) -> Signer:
        """A signer over a data dir's `pki/`, reloading the CA when its files change."""
        path = Path(directory)
        signer = cls(lambda: CertificateAuthority.load(path), where=str(path))

        def version() -> object:
            stamps: list[tuple[int, int, int] | None] = []
            for name in (INTERMEDIATE_FILE, CA_CERT_FILE):
                try:
                    st = (path / name).stat()
                except FileNotFoundError:
                    stamps.append(None)
                else:
                    stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
            return tuple(stamps)

        signer._version_of = version
        return signer

    def authority(self) -> CertificateAuthority:
        """The issuing CA as it is now; SigningError when it cannot be loaded."""
        with self._lock:
            version = self._version_of()
            if self._cached is None or version != self._version:
                try:
                    self._cached = self._load()
                except (OSError, ValueError, TypeError) as exc:
                    self._cached = None
                    raise SigningError(
                        f"cannot load the issuing CA from {self.where}: {exc}"
                    ) from exc
                self._version = version
            return self._cached

    @property
    def ca_pem(self) -> bytes:
        """The trust anchor (root) as PEM."""
        return self.authority().cert_pem

    def issue(self, request: LeafRequest, key: keys.PrivateKey) -> Issued:
        """Sign `request` for `key`; SigningError when the CA cannot."""
        ca = self.authority()
        try:
            certificate = ca.sign(request, key.public_key())
        except (ValueError, TypeError) as exc:
            raise SigningError(str(exc)) from exc
        return Issued(
            certificate=certificate,
            cert_pem=cert_to_pem(certificate) + ca.chain_pem,
            key_pem=keys.to_pem(key),
            ca_pem=ca.cert_pem,
        )

    def sign(self, request: LeafRequest, public_key: keys.PublicKey) -> tuple[x509.Certificate, bytes]:
        """Sign `request` for a key someone else holds (a CertificateSigningRequest's); returns
        the certificate and its chain as PEM (the leaf, then the intermediate)."""
        ca = self.authority()
        try:
            certificate = ca.sign(request, public_key)
        except (ValueError, TypeError) as exc:
            raise SigningError(str(exc)) from exc
        return certificate, cert_to_pem(certificate) + ca.chain_pem

    def problem_with(self, cert_pem: bytes, key_pem: bytes | None = None) -> str | None:
        """Why a stored chain (and key) is not what this signer would hand out now, or None.

        Catches a chain from a previous intermediate, from another CA, a broken or truncated
        file, and a key that does not belong to the certificate."""
        try:
            chain = x509.load_pem_x509_certificates(cert_pem)
        except ValueError:
            return "tls.crt holds no readable PEM certificate"
        leaf, rest = chain[0], chain[1:]
        ca = self.authority()
        if not ca.issued(leaf):
            return (
                f"it was issued by {leaf.issuer.rfc4514_string()!r}, not by the current issuing "
                f"CA {ca.cert.subject.rfc4514_string()!r}"
            )
        if tuple(rest) != ca.chain:
            return "tls.crt does not carry the current chain (the leaf, then the intermediate)"
        if key_pem is not None:
            try:
                key = keys.load_pem(key_pem, source="tls.key")
            except ValueError as exc:
                return str(exc)
            if key.public_key() != leaf.public_key():
                return "tls.key does not match the certificate in tls.crt"
        return None
