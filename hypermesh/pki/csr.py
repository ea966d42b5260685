"""Certificate signing requests and the fingerprints a joining node trusts and is known by.

A node never sees the cluster's keys: it makes its own key, sends a PKCS#10 request naming
itself (`CN=system:node:<name>, O=system:nodes`, Kubernetes' node identity) inside a
`certificates.k8s.io/v1` CertificateSigningRequest, and gets back a certificate. This module is
the x509 side of that: building and reading requests, and two fingerprints:

- `spki_hash`: SHA-256 over a certificate's SubjectPublicKeyInfo, `sha256:<hex>`, exactly
  kubeadm's `--discovery-token-ca-cert-hash`. A joining node has no CA yet; it fetches the
  cluster's CA over an unverified connection and accepts it only if this hash matches the one it
  was given out of band (`hypermesh token create` prints it). Hashing the public key rather than
  the certificate keeps the hash valid when the CA certificate is re-issued with the same key.
- `credential_id`: `X509SHA256=<hex>` of a client certificate, which the API server stamps into a
  CertificateSigningRequest's `spec.extra` (as Kubernetes does under
  `authentication.kubernetes.io/credential-id`), so a renewal says which certificate asked.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from hypermesh.pki import keys

# The signer of kubelet-style client certificates and the identity it issues.
NODE_CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
NODE_USER_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"
# What a node asks for (key encipherment only matters for RSA keys; ECDSA ones cannot encipher).
NODE_CLIENT_USAGES = ("digital signature", "client auth")
CREDENTIAL_ID_KEY = "authentication.kubernetes.io/credential-id"
# Where the API server publishes the cluster CA (PEM) to anyone: a joining node fetches it
# there, unverified, and keeps it only if its public key hash is the one it was given.
CA_PATH = "/.well-known/hypermesh/ca.crt"

_CA_HASH = re.compile(r"^sha256:([0-9a-f]{64})$")


def build_request(key: keys.PrivateKey, common_name: str, organizations: Sequence[str] = ()) -> bytes:
    """A PEM PKCS#10 request for `key` with subject CN=`common_name`, one O per organization."""
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    request = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes)).sign(key, keys.signature_hash(key))
    return request.public_bytes(serialization.Encoding.PEM)


def load_request(pem: bytes) -> x509.CertificateSigningRequest:
    """A PEM request whose signature is valid; ValueError says what is wrong."""
    try:
        request = x509.load_pem_x509_csr(pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate request (-----BEGIN CERTIFICATE REQUEST-----): {exc}") from None
    if not request.is_signature_valid:
        raise ValueError("the request's signature does not match its public key")
    return request


def subject_parts(request: x509.CertificateSigningRequest | x509.Certificate) -> tuple[str, tuple[str, ...]]:
    """(common name, organizations) of a request's or certificate's subject."""
    subject = request.subject
    common = [_text(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    organizations = tuple(_text(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME))
    return (common[0] if len(common) == 1 else ""), organizations


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def spki_hash(cert: x509.Certificate) -> str:
    """`sha256:<hex>` over the certificate's SubjectPublicKeyInfo (kubeadm's CA cert hash)."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def parse_ca_hash(text: str) -> str:
    """A normalized `sha256:<64 hex>`; ValueError says what the form is."""
    value = text.strip().lower()
    if not _CA_HASH.match(value):
        raise ValueError(
            f"{text!r} is not a CA hash: expected sha256:<64 hex digits>, the SHA-256 of the CA "
            "certificate's public key (`hypermesh token create` prints it)"
        )
    return value


def matches_ca_hash(cert: x509.Certificate, expected: str) -> bool:
    """Whether `cert`'s public key hashes to `expected` (a parsed `sha256:<hex>`)."""
    return hmac.compare_digest(spki_hash(cert), expected)


def credential_id(cert_der: bytes) -> str:
    """`X509SHA256=<hex>`: how a client certificate is named in a request's user info."""
    return "X509SHA256=" + hashlib.sha256(cert_der).hexdigest()


def certificate_credential_id(cert: x509.Certificate) -> str:
    """`credential_id` of a parsed certificate."""
    return "X509SHA256=" + cert.fingerprint(hashes.SHA256()).hex()


def load_chain(pem: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, leaf first; ValueError when there is none."""
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate chain: {exc}") from None
    if not chain:
        raise ValueError("not a PEM certificate chain: no certificate in it")
    return chain
