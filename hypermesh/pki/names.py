"""Checking the names a certificate is asked to carry, with errors that say how to fix them.

A certificate is a claim made with the cluster's authority, so what it may name is checked
before anything is signed: DNS names (RFC 1123, with one leading `*.` wildcard label allowed),
IP addresses, and URIs. URIs must be absolute (`scheme:rest`, no spaces); SPIFFE IDs get the
SPIFFE specification's rules plus HyperMesh's identity shape,
`spiffe://<trust domain>/ns/<namespace>/sa/<name>`, where the trust domain is the cluster's
and the namespace is the requester's own. Without that last rule anyone allowed to create a
Certificate in one namespace could mint the workload identity of another.

Errors read like the API server's field errors (`spec.uris[0]: Invalid value: "x": ...`).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_TRUST_DOMAIN = re.compile(r"^[a-z0-9._-]+$")
_SPIFFE_SEGMENT = re.compile(r"^[A-Za-z0-9._-]+$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_MAX_SPIFFE_ID = 2048
SPIFFE_EXAMPLE = "spiffe://cluster.local/ns/default/sa/web"


@dataclass(frozen=True)
class FieldError:
    """One invalid value, where it is, and what would be valid."""

    path: str
    value: object
    message: str

    def __str__(self) -> str:
        return f"{self.path}: Invalid value: {json.dumps(self.value)}: {self.message}"


class InvalidNames(ValueError):
    """One or more names a certificate may not carry."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(error) for error in errors))


def dns_name_error(value: str) -> str | None:
    """Why `value` is not a DNS name a certificate may carry, or None when it is."""
    if not value:
        return "must not be empty"
    if len(value) > 253:
        return f"must be at most 253 characters (it has {len(value)})"
    labels = value.split(".")
    if labels[0] == "*":
        if len(labels) < 3:
            # "*" or "*.com" would match whole top-level domains.
            return "a wildcard must be followed by at least two labels, such as *.example.com"
        labels = labels[1:]
    for label in labels:
        if "*" in label:
            return "a wildcard is allowed only as the whole first label (*.example.com)"
        if not _DNS_LABEL.match(label):
            return (
                "must be a DNS name of labels of letters, digits and '-' (each 1-63 "
                "characters, not starting or ending with '-'), such as web.default.svc"
            )
    return None


def ip_address_error(value: str) -> str | None:
    """Why `value` is not an IPv4 or IPv6 address, or None when it is."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "must be an IPv4 or IPv6 address, such as 10.0.0.1 or fd00::1"
    return None


@dataclass(frozen=True)
class SpiffeID:
    """A HyperMesh workload identity: trust domain, namespace, service account."""

    trust_domain: str
    namespace: str
    service_account: str

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"


def parse_spiffe_id(value: str) -> SpiffeID:
    """Parse `spiffe://<trust domain>/ns/<namespace>/sa/<name>`; ValueError says what is wrong."""
    if len(value) > _MAX_SPIFFE_ID:
        raise ValueError(f"a SPIFFE ID is at most {_MAX_SPIFFE_ID} characters")
    if not value.startswith("spiffe://"):
        raise ValueError(
            f"a SPIFFE ID starts with spiffe:// (lower case), such as {SPIFFE_EXAMPLE}"
        )
    rest = value[len("spiffe://") :]
    if "?" in rest or "#" in rest:
        raise ValueError("a SPIFFE ID has no query or fragment")
    trust_domain, slash, path = rest.partition("/")
    if not trust_domain:
        raise ValueError("a SPIFFE ID needs a trust domain after spiffe://")
    if not _TRUST_DOMAIN.match(trust_domain):
        raise ValueError(
            f"trust domain {trust_domain!r} may hold only lower-case letters, digits, '.', '-' "
            "and '_' (no port, no user)"
        )
    segments = path.split("/") if slash else []
    for segment in segments:
        if not segment:
            raise ValueError("a SPIFFE ID's path has no empty segments and no trailing '/'")
        if segment in (".", ".."):
            raise ValueError("a SPIFFE ID's path has no '.' or '..' segments")
        if not _SPIFFE_SEGMENT.match(segment):
            raise ValueError(
                f"path segment {segment!r} may hold only letters, digits, '.', '-' and '_'"
            )
    if len(segments) != 4 or segments[0] != "ns" or segments[2] != "sa":
        raise ValueError(
            f"HyperMesh workload identities have the form spiffe://<trust domain>/ns/<namespace>"
            f"/sa/<name>, such as {SPIFFE_EXAMPLE}"
        )
    namespace, account = segments[1], segments[3]
    for what, name in (("namespace", namespace), ("service account", account)):
        if not _SUBDOMAIN.match(name) or len(name) > 253:
            raise ValueError(f"{what} {name!r} must be a lower-case DNS subdomain")
    return SpiffeID(trust_domain, namespace, account)


def uri_error(value: str, *, namespace: str, trust_domain: str | None) -> str | None:
    """Why `value` may not be a URI name of a certificate requested from `namespace`, or None.

    `trust_domain` None accepts any trust domain (a test or a multi-domain setup)."""
    if not value or any(c.isspace() or ord(c) < 0x20 for c in value):
        return f"must be an absolute URI without spaces, such as {SPIFFE_EXAMPLE}"
    if not _SCHEME.match(value):
        return f"must be an absolute URI (scheme:rest), such as {SPIFFE_EXAMPLE}"
    try:
        urlsplit(value)
    except ValueError as exc:
        return f"is not a valid URI ({exc})"
    if value.split(":", 1)[0].lower() != "spiffe":
        return None
    try:
        identity = parse_spiffe_id(value)
    except ValueError as exc:
        return str(exc)
    if trust_domain is not None and identity.trust_domain != trust_domain:
        return f"the trust domain must be this cluster's, {trust_domain!r}"
    if identity.namespace != namespace:
        return (
            f"a Certificate in namespace {namespace!r} may only name identities of that "
            f"namespace (spiffe://{identity.trust_domain}/ns/{namespace}/sa/...)"
        )
    return None


def check(
    *,
    namespace: str,
    trust_domain: str | None,
    dns_names: list[str],
    ip_addresses: list[str],
    uris: list[str],
    prefix: str = "spec",
) -> None:
    """Raise InvalidNames listing every bad name (field paths under `prefix`)."""
    errors: list[FieldError] = []
    for index, name in enumerate(dns_names):
        reason = dns_name_error(name)
        if reason:
            errors.append(FieldError(f"{prefix}.dnsNames[{index}]", name, reason))
    for index, address in enumerate(ip_addresses):
        reason = ip_address_error(address)
        if reason:
            errors.append(FieldError(f"{prefix}.ipAddresses[{index}]", address, reason))
    spiffe = 0
    for index, uri in enumerate(uris):
        reason = uri_error(uri, namespace=namespace, trust_domain=trust_domain)
        if reason:
            errors.append(FieldError(f"{prefix}.uris[{index}]", uri, reason))
        elif uri.lower().startswith("spiffe:"):
            spiffe += 1
            if spiffe > 1:
                # SPIFFE X.509-SVID: exactly one SPIFFE ID, or a peer cannot tell who it is.
                errors.append(
                    FieldError(
                        f"{prefix}.uris[{index}]",
                        uri,
                        "a certificate carries at most one SPIFFE ID",
                    )
                )
    if errors:
        raise InvalidNames(errors)
