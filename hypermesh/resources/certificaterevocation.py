"""CertificateRevocation: one revoked certificate (mirrors crds/certificaterevocation.yaml).

Why one object per serial rather than one list object (a CRL): revoking is then a create, which
never conflicts with another revoker and is idempotent (the name is the serial, so a second
revocation of it is AlreadyExists); each watch event carries one entry, not the whole list;
the audit log names who revoked which serial; and a stale entry (its certificate expired) is
deleted on its own. A list object would need read-modify-write with conflicts, and would send
every follower the whole list at every change.

A serial is revoked while any CertificateRevocation names it. Serials are random 159-bit
numbers (RFC 5280 asks for unpredictable ones), so a serial revoked for another CA's
certificate refuses nothing of ours in practice; `issuer` is kept for the record only.

`RevokedSerials` is the set its followers keep (the API server through its watch cache, the
node agent through an informer, the certificates controller): no I/O, one call per event, and
it answers which serials became revoked, so the follower can close their connections.
"""

from __future__ import annotations

import datetime
from collections import Counter
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from hypermesh.resources.meta import Model, ObjectMeta, Resource

__all__ = [
    "CertificateRef",
    "CertificateRevocation",
    "CertificateRevocationSpec",
    "RevocationReason",
    "RevokedSerials",
    "revocation",
    "serial_hex",
    "serial_of",
]

RevocationReason = Literal[
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "certificateHold",
    "privilegeWithdrawn",
    "aACompromise",
]
SerialHex = Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=r"^[0-9a-f]+$")]


class CertificateRef(Model):
    namespace: str
    name: str
    uid: str | None = None


class CertificateRevocationSpec(Model):
    serial_number: SerialHex
    issuer: Annotated[str, Field(max_length=1024)] | None = None
    subject: Annotated[str, Field(max_length=1024)] | None = None
    reason: RevocationReason = "unspecified"
    revoked_at: datetime.datetime | None = None
    not_after: datetime.datetime | None = None
    certificate_ref: CertificateRef | None = None


class CertificateRevocation(Resource):
    api_version: Literal["hypermesh.io/v1"] = "hypermesh.io/v1"
    kind: Literal["CertificateRevocation"] = "CertificateRevocation"
    spec: CertificateRevocationSpec


def serial_hex(serial: int) -> str:
    """A serial number as revocations (and Certificate status.serialNumber) spell it."""
    return format(serial, "x")


def serial_of(obj: dict[str, Any]) -> int | None:
    """The serial a CertificateRevocation object revokes; None when it names none readable."""
    text = (obj.get("spec") or {}).get("serialNumber")
    if not isinstance(text, str) or not text:
        return None
    try:
        return int(text, 16)
    except ValueError:
        return None


def revocation(
    serial: int,
    *,
    reason: RevocationReason = "unspecified",
    subject: str | None = None,
    issuer: str | None = None,
    not_after: datetime.datetime | None = None,
    certificate_ref: CertificateRef | None = None,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """The CertificateRevocation object that revokes `serial` (named by it), ready to create."""
    name = serial_hex(serial)
    revoked = CertificateRevocation(
        metadata=ObjectMeta(name=name),
        spec=CertificateRevocationSpec(
            serial_number=name,
            reason=reason,
            subject=subject,
            issuer=issuer,
            not_after=not_after,
            certificate_ref=certificate_ref,
            revoked_at=(now or datetime.datetime.now(datetime.UTC)).replace(microsecond=0),
        ),
    )
    return revoked.to_dict()


class RevokedSerials:
    """The serials named by a set of CertificateRevocation objects, kept from their events."""

    def __init__(self) -> None:
        # object name -> the serial it revokes; a serial stays revoked while any name holds it.
        self._by_name: dict[str, int] = {}
        self._count: Counter[int] = Counter()

    def __contains__(self, serial: object) -> bool:
        return serial in self._count

    def __len__(self) -> int:
        return len(self._count)

    def is_revoked(self, serial: int | None) -> bool:
        """Whether a certificate with this serial is refused (None, no certificate: never)."""
        return serial is not None and serial in self._count

    def serials(self) -> frozenset[int]:
        """Every revoked serial."""
        return frozenset(self._count)

    def name_of(self, serial: int) -> str | None:
        """The name of an object revoking `serial`, for messages."""
        return next((name for name, held in self._by_name.items() if held == serial), None)

    def replace(self, objects: Iterable[dict[str, Any]]) -> frozenset[int]:
        """Start over from a full list; returns the serials revoked now and not before."""
        before = self.serials()
        self._by_name.clear()
        self._count.clear()
        for obj in objects:
            self._put(obj)
        return self.serials() - before

    def apply(self, event: str, obj: dict[str, Any]) -> frozenset[int]:
        """Apply one watch event (ADDED, MODIFIED, DELETED); returns the serials it revoked."""
        name = str(obj["metadata"]["name"])
        old = self._by_name.get(name)
        self._drop(name)
        if event != "DELETED":
            self._put(obj)
        new = self._by_name.get(name)
        if new is not None and new != old and self._count[new] == 1:
            return frozenset((new,))
        return frozenset()

    def _put(self, obj: dict[str, Any]) -> None:
        name, serial = str(obj["metadata"]["name"]), serial_of(obj)
        self._drop(name)
        if serial is not None:
            self._by_name[name] = serial
            self._count[serial] += 1

    def _drop(self, name: str) -> None:
        serial = self._by_name.pop(name, None)
        if serial is not None:
            self._count[serial] -= 1
            if self._count[serial] <= 0:
                del self._count[serial]
