"""Who a client is, read from its (already verified) certificate.

The mapping is Kubernetes' x509 convention, so certificates made for a Kubernetes cluster mean
the same thing here: the subject's common name is the user, every organization is a group.
Parsing happens once per connection, never per request, so the listeners hand the same frozen
`Identity` object to every request on a connection.

An identity also carries the serial number of the certificate it was read from, so that a
revocation list (which names serials) can be checked against it on every request. The serial is
provenance, not identity: two certificates of the same user and groups compare equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import NameOID


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated client: a user name, the groups it belongs to, and (when it came from a
    certificate) that certificate's serial number."""

    user: str
    groups: tuple[str, ...] = ()
    serial: int | None = field(default=None, compare=False)


def _attribute_text(attribute: x509.NameAttribute) -> str:
    value = attribute.value
    return value.decode("utf-8") if isinstance(value, bytes) else value


def identity_from_cert(cert: x509.Certificate) -> Identity:
    """Return the identity a certificate names; raise ValueError when it names no user."""
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    user = _attribute_text(common_names[0]) if common_names else ""
    if not user:
        # Kubernetes refuses such certificates as well: an empty user would be indistinguishable
        # from a mistake, and must not silently become some default account.
        raise ValueError(f"certificate {cert.subject.rfc4514_string()!r} has no common name")
    groups = tuple(
        _attribute_text(attr)
        for attr in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    )
    return Identity(user=user, groups=groups, serial=cert.serial_number)


def identity_from_der(cert_der: bytes) -> Identity:
    """Return the identity named by a DER certificate (CN = user, O = groups)."""
    return identity_from_cert(x509.load_der_x509_certificate(cert_der))
