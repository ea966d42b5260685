"""Certificate: a certificate to keep issued and fresh (mirrors crds/certificate.yaml).

The semantics are cert-manager's: the certificates controller issues from the cluster CA (or
`spec.issuerRef`), writes tls.crt/tls.key/ca.crt into the Secret `spec.secretName`, records the
validity window in `status`, and renews at `status.renewalTime`.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

from pydantic import Field

from hypermesh.resources.meta import Condition, Duration, Model, Resource

__all__ = [
    "Certificate",
    "CertificatePrivateKey",
    "CertificateSpec",
    "CertificateStatus",
    "IssuerRef",
    "KeyUsage",
]

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
    # 256 for ECDSA and 2048 for RSA when unset.
    size: Annotated[int, Field(ge=0)] | None = None


class IssuerRef(Model):
    name: str
    kind: str | None = None
    group: str | None = None


class CertificateSpec(Model):
    secret_name: Annotated[str, Field(min_length=1, max_length=253)]
    common_name: Annotated[str, Field(max_length=64)] | None = None
    dns_names: list[str] | None = None
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


class Certificate(Resource):
    api_version: Literal["hypermesh.io/v1"] = "hypermesh.io/v1"
    kind: Literal["Certificate"] = "Certificate"
    spec: CertificateSpec
    status: CertificateStatus | None = None
