"""Certificate: a certificate to keep issued and fresh (mirrors crds/certificate.yaml).

The semantics are cert-manager's: the certificates controller issues from the cluster's
intermediate CA, writes tls.crt (leaf + intermediate), tls.key and ca.crt (the root) into the
Secret `spec.secretName`, records the validity window in `status`, renews at
`status.renewalTime`, and after failures waits 1 h doubling to 32 h
(`status.failedIssuanceAttempts`, `status.lastFailureTime`). IP addresses, URIs and SPIFFE IDs
are checked by the controller (`hypermesh.pki.names`), which the schema cannot express.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from hypermesh.resources.meta import Condition, Duration, Model, Resource

__all__ = [
    "Certificate",
    "CertificatePrivateKey",
    "CertificateSpec",
    "CertificateStatus",
    "IssuerRef",
    "KeyUsage",
]

# RFC 1123 names, with one leading "*." label for a wildcard (checked further by the controller).
DNS_NAME_PATTERN = (
    r"^(\*\.)?[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$"
)
DNSName = Annotated[str, StringConstraints(max_length=253, pattern=DNS_NAME_PATTERN)]

KeyUsage = Literal[
    "signing",
    "digital signature",
    "content commitment",
    "key encipherment",
    "key agreement",
    "data encipherment",
    "cert sign",
    "crl sign",
    "encipher only",
    "decipher only",
    "any",
    "server auth",
    "client auth",
    "code signing",
    "email protection",
    "timestamping",
    "ocsp signing",
]


class CertificatePrivateKey(Model):
    algorithm: Literal["ECDSA", "Ed25519", "RSA"] = "ECDSA"
    # ECDSA 256 (default), 384, 521; RSA 2048 (default), 3072, 4096; ignored for Ed25519.
    size: Annotated[int, Field(ge=0)] | None = None
    # cert-manager's default since v1.18: a new key at every issuance.
    rotation_policy: Literal["Never", "Always"] = "Always"


class IssuerRef(Model):
    name: str
    kind: str | None = None
    group: str | None = None


class CertificateSpec(Model):
    secret_name: Annotated[str, Field(min_length=1, max_length=253)]
    common_name: Annotated[str, Field(max_length=64)] | None = None
    dns_names: list[DNSName] | None = None
    ip_addresses: list[str] | None = None
    uris: list[str] | None = None
    is_ca: bool | None = None
    duration: Duration = "24h"
    renew_before: Duration | None = None
    usages: list[KeyUsage] | None = None
    private_key: CertificatePrivateKey | None = None
    issuer_ref: IssuerRef | None = None


class CertificateStatus(Model):
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    conditions: list[Condition] | None = None
    not_before: datetime.datetime | None = None
    not_after: datetime.datetime | None = None
    renewal_time: datetime.datetime | None = None
    serial_number: str | None = None
    revision: Annotated[int, Field(ge=1)] | None = None
    failed_issuance_attempts: Annotated[int, Field(ge=0)] | None = None
    last_failure_time: datetime.datetime | None = None


class Certificate(Resource):
    api_version: Literal["hypermesh.io/v1"] = "hypermesh.io/v1"
    kind: Literal["Certificate"] = "Certificate"
    spec: CertificateSpec
    status: CertificateStatus | None = None
