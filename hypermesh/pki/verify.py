"""Verifying a client certificate chain in Python, for TLS stacks that do not do it.

OpenSSL (the TCP listener) verifies client chains during the handshake. aioquic (the HTTP/3
listener) does not: it checks that the client holds the certificate's key, then accepts any
certificate at all. This module fills that gap with `cryptography`'s WebPKI verifier:
signature chain up to the cluster's root (through the intermediates the client sent after its
leaf, as HyperMesh's certificate files do), validity period, basic constraints and path
length, key usage and the clientAuth extended key usage, the same checks OpenSSL makes for
the TCP listener.

The WebPKI profile demands a subjectAltName on every leaf, but Kubernetes-style client
certificates carry none (their identity is the subject), so that one requirement is relaxed.

Revocation is a question the verifier asks, not a list it keeps: `revoked(serial) -> bool` is
consulted on every verification (never cached), so whoever owns the revocation list (the API
server) decides what it answers and how fast a change takes effect.

Verifying a two-certificate ECDSA chain costs ~0.3 ms, a noticeable share of a QUIC handshake,
and clients present the same chain again and again (a CLI user's certificate, an agent's). So
chains that passed are remembered (bounded, least recently used first out) until the earliest
notAfter among them: nothing else in the verdict depends on time, the trust anchors of a
verifier never change, and failures are never remembered.
"""

from __future__ import annotations

import datetime
from collections import OrderedDict
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.x509 import verification

from hypermesh.pki.identity import Identity, identity_from_cert

# Answers whether the certificate with this serial number has been revoked.
RevocationCheck = Callable[[int], bool]
# Chains that passed, remembered at once.
VERIFIED_CACHE_SIZE = 1024


class CertificateRejected(Exception):
    """The client presented a certificate that the cluster CA does not vouch for."""


class CertificateRevoked(CertificateRejected):
    """The client's certificate is valid but its serial number has been revoked."""

    def __init__(self, serial: int) -> None:
        super().__init__(f"client certificate with serial {serial:#x} has been revoked")
        self.serial = serial


class ClientCertificateVerifier:
    """Checks client chains against a fixed set of trusted CA certificates (and, when given,
    a revocation check on the leaf's serial number)."""

    def __init__(
        self,
        ca_pem: bytes,
        *,
        revoked: RevocationCheck | None = None,
        cache_size: int = VERIFIED_CACHE_SIZE,
    ) -> None:
        self.revoked = revoked
        self._cache_size = cache_size
        # (leaf, *intermediates) -> (identity, epoch seconds until which the verdict holds)
        self._verified: OrderedDict[tuple[x509.Certificate, ...], tuple[Identity, float]] = (
            OrderedDict()
        )
        roots = x509.load_pem_x509_certificates(ca_pem)
        self._store = verification.Store(roots)
        self._ee_policy = verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(
            x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None
        )
        self._ca_policy = verification.ExtensionPolicy.webpki_defaults_ca()

    def verify(
        self, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate] = ()
    ) -> Identity:
        """Return the identity of a valid chain; raise CertificateRejected otherwise
        (CertificateRevoked when the chain is valid but the leaf is revoked)."""
        key = (leaf, *intermediates)
        now = datetime.datetime.now(datetime.UTC).timestamp()
        remembered = self._verified.get(key)
        if remembered is not None and now < remembered[1]:
            self._verified.move_to_end(key)
            identity = remembered[0]
        else:
            identity = self._verify_chain(leaf, intermediates)
            until = min(cert.not_valid_after_utc.timestamp() for cert in key)
            self._verified[key] = (identity, until)
            self._verified.move_to_end(key)
            while len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
        if self.revoked is not None and self.revoked(leaf.serial_number):
            raise CertificateRevoked(leaf.serial_number)
        return identity

    def _verify_chain(
        self, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate]
    ) -> Identity:
        # A verifier captures "now" when it is built, so a long-lived one would slowly stop
        # noticing expiry; building one costs about a microsecond, so build it per check.
        verifier = (
            verification.PolicyBuilder()
            .store(self._store)
            .extension_policies(ca_policy=self._ca_policy, ee_policy=self._ee_policy)
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf, list(intermediates))
        except verification.VerificationError as exc:
            raise CertificateRejected(f"client certificate rejected: {exc}") from exc
        try:
            return identity_from_cert(leaf)
        except ValueError as exc:
            raise CertificateRejected(str(exc)) from exc
