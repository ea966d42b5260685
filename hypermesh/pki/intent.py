"""What a Certificate's spec asks for, checked against the cluster's policy, and whether an
issued certificate still says it.

The API server's schema checks shapes (types, enums, the duration syntax, DNS name syntax);
what needs judgement is here: IP addresses and URIs (`names`), SPIFFE IDs naming the
requester's own namespace, key algorithms and sizes (`keys`), a duration the cluster allows,
`renewBefore` shorter than `duration`, and `isCA`. Every problem is reported at once, each with
its field path, so one round trip fixes a spec.

`isCA` is refused unless the cluster allows it. A Certificate can be created by anyone with
write access to one namespace, and a CA certificate is a signing key: an administrator should
grant that on purpose. Even when allowed, the issued CA cannot chain to the cluster's root (the
intermediate has path length 0), so it can anchor a separate trust domain but never mint an
identity the cluster trusts.

The `fingerprint` covers everything issuance depends on; the controller stores it on the
Secret, so a spec edit (even one an issued certificate cannot show, like `duration`) means a
new certificate. `mismatch` reads the certificate itself, so a Secret whose `tls.crt` was
swapped for another (even one from this CA) is caught too.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from hypermesh.pki import keys, names, profile, renewal
from hypermesh.pki.names import FieldError
from hypermesh.pki.profile import LeafRequest

DEFAULT_DURATION = datetime.timedelta(hours=24)


@dataclass(frozen=True)
class Policy:
    """What this cluster lets a Certificate ask for."""

    # SPIFFE IDs must be in this trust domain; None accepts any.
    trust_domain: str | None = "cluster.local"
    allow_ca: bool = False
    # cert-manager's minimum; tests lower it to watch renewals happen.
    min_duration: datetime.timedelta = datetime.timedelta(hours=1)


@dataclass(frozen=True)
class Intent:
    """A validated Certificate spec, ready to sign."""

    request: LeafRequest
    key: keys.KeySpec
    # rotationPolicy Always: a new key at every issuance.
    rotate_key: bool
    duration: datetime.timedelta
    renew_before: datetime.timedelta | None
    fingerprint: str


class InvalidSpec(ValueError):
    """A Certificate spec that cannot be issued; `errors` has one entry per bad field."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(error) for error in errors))


def _strings(spec: Mapping[str, Any], field: str) -> list[str]:
    value = spec.get(field) or []
    return [str(item) for item in value] if isinstance(value, list) else []


def _duration(
    spec: Mapping[str, Any], field: str, errors: list[FieldError]
) -> datetime.timedelta | None:
    text = spec.get(field)
    if text is None:
        return None
    try:
        return renewal.parse_duration(str(text))
    except ValueError as exc:
        errors.append(FieldError(f"spec.{field}", text, str(exc)))
        return None


def from_spec(spec: Mapping[str, Any], *, namespace: str, policy: Policy) -> Intent:
    """The intent of a Certificate's `spec` (wire form); InvalidSpec lists every problem."""
    errors: list[FieldError] = []
    common_name = str(spec.get("commonName") or "")
    dns_names = _strings(spec, "dnsNames")
    ip_addresses = _strings(spec, "ipAddresses")
    uris = _strings(spec, "uris")
    try:
        names.check(
            namespace=namespace,
            trust_domain=policy.trust_domain,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            uris=uris,
        )
    except names.InvalidNames as exc:
        errors.extend(exc.errors)
    if not (common_name or dns_names or ip_addresses or uris):
        errors.append(
            FieldError(
                "spec", {}, "at least one of commonName, dnsNames, ipAddresses or uris must be set"
            )
        )

    issuer = spec.get("issuerRef")
    if issuer:
        errors.append(
            FieldError(
                "spec.issuerRef",
                issuer,
                "only the cluster CA issues certificates here: remove issuerRef",
            )
        )

    private_key = spec.get("privateKey") or {}
    key_spec = keys.KeySpec()
    try:
        key_spec = keys.KeySpec.parse(private_key.get("algorithm"), private_key.get("size"))
    except keys.KeySpecError as exc:
        errors.append(FieldError("spec.privateKey", private_key, str(exc)))
    rotate_key = private_key.get("rotationPolicy", "Always") != "Never"

    is_ca = bool(spec.get("isCA"))
    if is_ca and not policy.allow_ca:
        errors.append(
            FieldError(
                "spec.isCA",
                True,
                "this cluster does not issue CA certificates from a Certificate (a signing key is "
                "granted by an administrator; the controller's allow_ca setting)",
            )
        )

    raw_usages = _strings(spec, "usages")
    usages: frozenset[str] = frozenset()
    try:
        usages = profile.normalize_usages(
            raw_usages or profile.default_usages(key_spec.algorithm), is_ca=is_ca
        )
        profile.key_usage_extension(usages)
    except profile.UsageError as exc:
        errors.append(FieldError("spec.usages", raw_usages, str(exc)))

    duration = _duration(spec, "duration", errors) or DEFAULT_DURATION
    if duration < policy.min_duration:
        errors.append(
            FieldError(
                "spec.duration",
                spec.get("duration"),
                f"must be at least {renewal.format_duration(policy.min_duration)}",
            )
        )
    renew_before = _duration(spec, "renewBefore", errors)
    if renew_before is not None and not datetime.timedelta(0) < renew_before < duration:
        errors.append(
            FieldError(
                "spec.renewBefore",
                spec.get("renewBefore"),
                f"must be more than 0s and less than the duration "
                f"({renewal.format_duration(duration)})",
            )
        )
    if errors:
        raise InvalidSpec(errors)

    request = LeafRequest(
        common_name=common_name,
        dns_names=tuple(dns_names),
        # The canonical spelling, so "0:0::1" in a spec compares equal to what the leaf says.
        ip_addresses=tuple(str(ipaddress.ip_address(ip)) for ip in ip_addresses),
        uris=tuple(uris),
        usages=usages,
        is_ca=is_ca,
        lifetime=duration,
    )
    return Intent(
        request=request,
        key=key_spec,
        rotate_key=rotate_key,
        duration=duration,
        renew_before=renew_before,
        fingerprint=_fingerprint(request, key_spec),
    )


def _fingerprint(request: LeafRequest, key: keys.KeySpec) -> str:
    material = {
        "v": 1,
        "cn": request.common_name,
        "dns": sorted(request.dns_names),
        "ip": sorted(request.ip_addresses),
        "uri": sorted(request.uris),
        "usages": sorted(request.usages),
        "ca": request.is_ca,
        "lifetime": request.lifetime.total_seconds(),
        "key": [key.algorithm, key.size],
    }
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    return digest[:32]


def _common_name(cert: x509.Certificate) -> str:
    attributes = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = attributes[0].value if attributes else ""
    return value.decode() if isinstance(value, bytes) else value


def _sans(cert: x509.Certificate) -> tuple[set[str], set[str], set[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set(), set()
    return (
        set(san.get_values_for_type(x509.DNSName)),
        {str(ip) for ip in san.get_values_for_type(x509.IPAddress)},
        set(san.get_values_for_type(x509.UniformResourceIdentifier)),
    )


def _listing(values: set[str]) -> str:
    return "[" + ", ".join(sorted(values)) + "]"


def mismatch(intent: Intent, cert: x509.Certificate) -> str | None:
    """How `cert` differs from what `intent` asks for, or None when it says exactly that."""
    request = intent.request
    if _common_name(cert) != request.common_name:
        return (
            f"its common name is {_common_name(cert)!r}, the spec asks for {request.common_name!r}"
        )
    dns, ips, uris = _sans(cert)
    for what, have, want in (
        ("DNS names", dns, set(request.dns_names)),
        ("IP addresses", ips, set(request.ip_addresses)),
        ("URIs", uris, set(request.uris)),
    ):
        if have != want:
            return f"its {what} are {_listing(have)}, the spec asks for {_listing(want)}"
    usages = profile.usages_of(cert)
    if usages != request.usages:
        asked = _listing(set(request.usages))
        return f"its usages are {_listing(set(usages))}, the spec asks for {asked}"
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca != request.is_ca:
        return f"it is {'' if is_ca else 'not '}a CA, the spec asks for isCA={request.is_ca}"
    have_key = keys.spec_of(cert.public_key())  # type: ignore[arg-type]
    if have_key != intent.key:
        return f"its key is {have_key}, the spec asks for {intent.key}"
    return None
