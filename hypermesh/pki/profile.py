"""What a leaf certificate says: names, usages, CA-ness and lifetime, as one request.

`LeafRequest` is the contract between whoever decides what a certificate should say (the
bootstrap code, the Certificate controller) and the CA that signs it; the CA adds only what the
CA decides (issuer, serial, key identifiers, the clamp to its own expiry).

Usages are spelled as cert-manager spells them (`digital signature`, `server auth`, ...), so a
Certificate's `spec.usages` passes through unchanged. The ones that are key usages go into the
critical keyUsage extension; the rest into extendedKeyUsage. Without usages cert-manager issues
`digital signature` and `key encipherment`; key encipherment is kept for RSA keys only here,
because ECDSA and Ed25519 keys cannot encipher anything.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

# cert-manager usage -> the x509.KeyUsage field it sets ("signing" is digital signature).
KEY_USAGES: dict[str, str] = {
    "signing": "digital_signature",
    "digital signature": "digital_signature",
    "content commitment": "content_commitment",
    "key encipherment": "key_encipherment",
    "key agreement": "key_agreement",
    "data encipherment": "data_encipherment",
    "cert sign": "key_cert_sign",
    "crl sign": "crl_sign",
    "encipher only": "encipher_only",
    "decipher only": "decipher_only",
}
EXTENDED_KEY_USAGES: dict[str, ObjectIdentifier] = {
    "any": ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    "server auth": ExtendedKeyUsageOID.SERVER_AUTH,
    "client auth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "code signing": ExtendedKeyUsageOID.CODE_SIGNING,
    "email protection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timestamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "ocsp signing": ExtendedKeyUsageOID.OCSP_SIGNING,
}
_KEY_USAGE_FIELDS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)


class UsageError(ValueError):
    """A usage name that is neither a key usage nor an extended key usage."""


def default_usages(algorithm: str) -> frozenset[str]:
    """cert-manager's defaults, minus key encipherment for keys that cannot encipher."""
    if algorithm == "RSA":
        return frozenset({"digital signature", "key encipherment"})
    return frozenset({"digital signature"})


def normalize_usages(usages: Iterable[str], *, is_ca: bool = False) -> frozenset[str]:
    """The canonical set: `signing` becomes `digital signature`; a CA always gets `cert sign`
    (cert-manager adds it too, since a CA that may not sign certificates is no CA)."""
    result = set()
    for usage in usages:
        if usage not in KEY_USAGES and usage not in EXTENDED_KEY_USAGES:
            allowed = ", ".join([*KEY_USAGES, *EXTENDED_KEY_USAGES])
            raise UsageError(f"unknown usage {usage!r}: use one of {allowed}")
        result.add("digital signature" if usage == "signing" else usage)
    if is_ca:
        result.add("cert sign")
    return frozenset(result)


@dataclass(frozen=True)
class LeafRequest:
    """Everything a leaf certificate says that its requester decides."""

    common_name: str = ""
    # Each becomes one O attribute: Kubernetes reads every O as a group.
    organizations: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    usages: frozenset[str] = field(default_factory=lambda: frozenset({"digital signature"}))
    is_ca: bool = False
    lifetime: datetime.timedelta = datetime.timedelta(hours=24)
    # How far before "now" validity starts, so a peer whose clock lags still accepts it.
    backdate: datetime.timedelta = datetime.timedelta(0)


def key_usage_extension(usages: frozenset[str]) -> x509.KeyUsage:
    """The keyUsage extension for a normalized usage set."""
    chosen = {KEY_USAGES[u] for u in usages if u in KEY_USAGES}
    flags = {name: name in chosen for name in _KEY_USAGE_FIELDS}
    # encipher_only/decipher_only are meaningful only with key agreement (RFC 5280 4.2.1.3);
    # cryptography refuses them otherwise, with a less helpful message.
    if (flags["encipher_only"] or flags["decipher_only"]) and not flags["key_agreement"]:
        raise UsageError("'encipher only' and 'decipher only' require 'key agreement'")
    return x509.KeyUsage(**flags)


def extended_key_usages(usages: frozenset[str]) -> list[ObjectIdentifier]:
    """The extended key usages of a normalized usage set (in a stable order)."""
    return [oid for name, oid in EXTENDED_KEY_USAGES.items() if name in usages]


def usages_of(cert: x509.Certificate) -> frozenset[str]:
    """The usage names a certificate carries (the inverse of the two functions above)."""
    names: set[str] = set()
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        ku = None
    if ku is not None:
        for name, attr in KEY_USAGES.items():
            if name == "signing":
                continue
            if attr in ("encipher_only", "decipher_only") and not ku.key_agreement:
                continue  # reading these raises unless key agreement is set
            if getattr(ku, attr):
                names.add(name)
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None:
        by_oid = {oid: name for name, oid in EXTENDED_KEY_USAGES.items()}
        names.update(by_oid[oid] for oid in eku if oid in by_oid)
    return frozenset(names)
