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
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.x509 import verification

from hypermesh.pki.identity import Identity, identity_from_cert


class CertificateRejected(Exception):
    """The client presented a certificate that the cluster CA does not vouch for."""


class ClientCertificateVerifier:
    """Checks client chains against a fixed set of trusted CA certificates."""

    def __init__(self, ca_pem: bytes) -> None:
        roots = x509.load_pem_x509_certificates(ca_pem)
        self._store = verification.Store(roots)
        self._ee_policy = verification.ExtensionPolicy.webpki_defaults_ee().may_be_present(
            x509.SubjectAlternativeName, verification.Criticality.AGNOSTIC, None
        )
        self._ca_policy = verification.ExtensionPolicy.webpki_defaults_ca()

    def verify(
        self, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate] = ()
    ) -> Identity:
        """Return the identity of a valid chain; raise CertificateRejected otherwise."""
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
