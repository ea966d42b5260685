"""The certificates controller: keeps each Certificate issued, stored and fresh.

cert-manager's semantics, with the cluster's intermediate CA as the only issuer. For each
Certificate the controller keeps a core v1 Secret (`spec.secretName`, type kubernetes.io/tls,
controlled by the Certificate through an ownerReference) holding `tls.crt` (leaf, then
intermediate), `tls.key` and `ca.crt` (the root). It issues a new certificate when:

- the Secret does not exist, lacks data, or is controlled by nothing (it is adopted);
- `tls.crt` was not signed by the current intermediate (a rotation, another CA, tampering), or
  `tls.key` does not match it;
- the certificate no longer says what the spec asks (`hypermesh.pki.intent.mismatch`), or the
  spec changed in a way a certificate cannot show (`duration`): the Secret carries a
  fingerprint of the spec it was issued for;
- it expired, or its renewal time came. The reconcile asks to run again exactly at
  `status.renewalTime`, so renewal needs no polling;
- its serial was revoked (a CertificateRevocation names it, as `nexus cert revoke NAME` makes):
  the new certificate gets a new key whatever `rotationPolicy` says, since a revocation may mean
  the key leaked. The controller follows the revocations and wakes the Certificate whose
  `status.serialNumber` was revoked at once.

Deleting a Certificate revokes what it issued: a finalizer holds the deleted object until the
controller has recorded a CertificateRevocation (reason cessationOfOperation) for its current
serial and for the one in its Secret, if the Secret is still its own. The Secret itself stays
(as cert-manager leaves it), holding a certificate every HyperMesh component now refuses.

Every issuance increments `status.revision` and records Issuing then Issued Events. A failed
issuance (the CA cannot sign) increments `status.failedIssuanceAttempts`, sets
`lastFailureTime`, records a Failed Event and waits 1 h doubling to 32 h before the next try
(scaled by `CertificateSettings` in tests), unless the spec changes meanwhile. A spec that cannot
be issued (a bad URI, a SPIFFE ID of another namespace, an unsupported key size) is reported in
the Ready condition with every bad field and is not retried until the spec changes.

Signing goes through a `hypermesh.pki.Signer` given in the settings, so this module never learns
where keys live; key generation and signing run in a thread, off the event loop.

The caches lag the controller's own writes, so the objects it wrote last are remembered until
the informers have caught up (by resourceVersion, which is the state engine's global revision),
as the workloads controller remembers its creates: a reconcile woken by its own status write
never sees the Secret it just replaced as stale and issues twice.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from hypermesh.client.errors import ApiError
from hypermesh.client.resources import Resource
from hypermesh.operator import Context, Informer, Operator, Result
from hypermesh.operator.conditions import (
    ConditionStatus,
    get_condition,
    set_condition,
    status_changes,
)
from hypermesh.operator.informer import object_key
from hypermesh.pki import intent as intents
from hypermesh.pki import keys, renewal
from hypermesh.pki.signer import Issued, Signer, SigningError
from hypermesh.resources import certificaterevocation as revocations

log = logging.getLogger(__name__)

CERTIFICATES = Resource(
    group="hypermesh.io",
    version="v1",
    kind="Certificate",
    plural="certificates",
    singular="certificate",
    namespaced=True,
    short_names=("cert",),
    subresources=("status",),
)
SECRETS = Resource(
    group="", version="v1", kind="Secret", plural="secrets", singular="secret", namespaced=True
)
REVOCATIONS = Resource(
    group="hypermesh.io",
    version="v1",
    kind="CertificateRevocation",
    plural="certificaterevocations",
    singular="certificaterevocation",
    namespaced=False,
    short_names=("certrev",),
)
# Holds a deleted Certificate until what it issued is revoked.
REVOKE_FINALIZER = "hypermesh.io/revoke-certificate"
TLS_SECRET_TYPE = "kubernetes.io/tls"
# Which Certificate a Secret was issued for, and the fingerprint of that spec.
CERTIFICATE_NAME_ANNOTATION = "hypermesh.io/certificate-name"
SPEC_HASH_ANNOTATION = "hypermesh.io/certificate-spec-hash"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class CertificateSettings:
    """How the certificates controller issues; the defaults are cert-manager's."""

    signer: Signer
    policy: intents.Policy = field(default_factory=intents.Policy)
    # Failed issuances wait base * 2**(n-1) seconds, at most cap (cert-manager: 1 h to 32 h).
    backoff_base: float = renewal.DEFAULT_BACKOFF_BASE
    backoff_cap: float = renewal.DEFAULT_BACKOFF_CAP


@dataclass(frozen=True)
class _Trigger:
    """Why a certificate must be issued now: a Ready reason and a sentence."""

    reason: str
    message: str
    # True when the stored certificate is still valid and says what the spec asks (renewal).
    still_ready: bool = False


@dataclass(frozen=True)
class _Stored:
    """What the Secret holds, parsed."""

    cert: x509.Certificate
    cert_pem: bytes
    key_pem: bytes


def _time(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).strftime(_TIME_FORMAT)


def _parse_time(value: Any) -> datetime.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.strptime(value, _TIME_FORMAT).replace(tzinfo=datetime.UTC)
    except ValueError:
        return None


def _rv(obj: dict[str, Any] | None) -> int:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def _decode(secret: dict[str, Any], name: str) -> bytes:
    value = (secret.get("data") or {}).get(name)
    if not isinstance(value, str):
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return b""


def _controller_ref(obj: dict[str, Any]) -> dict[str, Any] | None:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((r for r in refs if isinstance(r, dict) and r.get("controller")), None)


def _owner_reference(cert: dict[str, Any]) -> dict[str, Any]:
    meta = cert["metadata"]
    return {
        "apiVersion": CERTIFICATES.api_version,
        "kind": CERTIFICATES.kind,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


class _Recent:
    """Objects this controller wrote, kept until its informer has caught up with them."""

    def __init__(self, informer: Informer) -> None:
        self.informer = informer
        self._written: dict[str, dict[str, Any]] = {}

    def remember(self, obj: dict[str, Any]) -> None:
        self._written[object_key(obj)] = obj

    def get(self, key: str) -> dict[str, Any] | None:
        """The newer of the cached object and the one written here (None: it is gone)."""
        cached = self.informer.get_key(key)
        written = self._written.get(key)
        if written is None:
            return cached
        mine = _rv(written)
        try:
            seen = int(self.informer.resource_version or 0)
        except ValueError:
            seen = 0
        # The cache has processed everything up to our write: its view (newer object,
        # or none because it was deleted since) is the truth.
        if _rv(cached) >= mine or seen >= mine:
            del self._written[key]
            return cached
        return written


class CertificateController:
    """The reconcile of Certificates, over the Certificate and Secret informers."""

    def __init__(self, op: Operator, settings: CertificateSettings) -> None:
        self.op = op
        self.settings = settings
        self.signer = settings.signer
        self.certificates = op.informer(CERTIFICATES)
        self.secrets = op.informer(SECRETS)
        self._recent_certificates = _Recent(self.certificates)
        self._recent_secrets = _Recent(self.secrets)
        # "namespace/secretName" -> keys of the Certificates that name it.
        self._by_secret: dict[str, set[str]] = defaultdict(set)
        self._secret_of: dict[str, str] = {}
        # Revoked serials, and the Certificates by the serial (hex) their status names.
        self.revoked = revocations.RevokedSerials()
        self._by_serial: dict[str, set[str]] = defaultdict(set)
        self._serial_of: dict[str, str] = {}
        self.revocations = op.informers.get(REVOCATIONS)
        op.reconcile(CERTIFICATES)(self.reconcile)
        self.controller = op.controllers[-1]
        op.on_delete(CERTIFICATES, finalizer=REVOKE_FINALIZER)(self.revoke_on_delete)
        self.certificates.subscribe(self._on_certificate)
        self.secrets.subscribe(self._on_secret)
        self.revocations.subscribe(self._on_revocation)

    # Informer events

    def _on_certificate(self, event: str, obj: dict[str, Any]) -> None:
        key = object_key(obj)
        before = self._secret_of.pop(key, None)
        if before is not None:
            self._by_secret[before].discard(key)
            if not self._by_secret[before]:
                del self._by_secret[before]
        name = (obj.get("spec") or {}).get("secretName")
        if event != "DELETED" and name:
            secret_key = f"{obj['metadata'].get('namespace')}/{name}"
            self._secret_of[key] = secret_key
            self._by_secret[secret_key].add(key)
        serial = self._serial_of.pop(key, None)
        if serial is not None:
            self._by_serial[serial].discard(key)
            if not self._by_serial[serial]:
                del self._by_serial[serial]
        serial = (obj.get("status") or {}).get("serialNumber")
        if event != "DELETED" and isinstance(serial, str) and serial:
            self._serial_of[key] = serial
            self._by_serial[serial].add(key)

    def _on_revocation(self, event: str, obj: dict[str, Any]) -> None:
        # A serial revoked: news for the Certificate that holds it (it must be re-issued).
        queue = self.controller.queue
        for serial in self.revoked.apply(event, obj):
            for key in self._by_serial.get(revocations.serial_hex(serial), ()):
                if queue is not None:
                    queue.add(key)

    def _on_secret(self, event: str, obj: dict[str, Any]) -> None:
        # A Secret changed, appeared or went: news for the Certificates that name it.
        queue = self.controller.queue
        if queue is None:
            return
        for key in self._by_secret.get(object_key(obj), ()):
            queue.add(key)

    # The reconcile

    async def reconcile(self, cert: dict[str, Any], ctx: Context) -> Result | None:
        """Converge one Certificate: issue if needed, then report and wait for renewal."""
        cert = self._recent_certificates.get(object_key(cert)) or cert
        meta = cert["metadata"]
        namespace = str(meta.get("namespace") or "default")
        spec = cert.get("spec") or {}
        now = datetime.datetime.now(datetime.UTC)
        try:
            intent = intents.from_spec(spec, namespace=namespace, policy=self.settings.policy)
        except intents.InvalidSpec as exc:
            await self._invalid(cert, ctx, str(exc))
            return None

        secret_name = str(spec.get("secretName"))
        secret = self._recent_secrets.get(f"{namespace}/{secret_name}")
        owner = _controller_ref(secret) if secret is not None else None
        if owner is not None and self._controlled_elsewhere(owner, namespace, meta):
            message = (
                f'Secret "{secret_name}" is controlled by {owner.get("kind")} '
                f'"{owner.get("name")}": choose another secretName'
            )
            await self._write_status(cert, ctx, ready=("False", "SecretInUse", message))
            return None

        stored = self._stored(secret)
        trigger = self._trigger(cert, intent, secret, stored, now)
        if trigger is None:
            assert stored is not None and secret is not None
            if (owner or {}).get("uid") != meta.get("uid"):
                await self._adopt(cert, secret)
            renew_at = await self._up_to_date(cert, ctx, intent, stored)
            return Result.requeue_after(max(0.0, (renew_at - now).total_seconds()))

        wait = self._backoff_left(cert, now)
        if wait is not None:
            ready = self._ready_for(trigger)
            await self._write_status(cert, ctx, ready=ready)
            return Result.requeue_after(wait)
        return await self._issue(cert, ctx, intent, secret, stored, trigger)

    def _controlled_elsewhere(
        self, owner: dict[str, Any], namespace: str, meta: dict[str, Any]
    ) -> bool:
        """Whether the Secret's controller is a live object other than this Certificate. A
        Certificate that is gone (deleted, or re-created under the same name with a new uid)
        no longer holds its Secret, which is adopted like an uncontrolled one."""
        if owner.get("uid") == meta.get("uid"):
            return False
        if (
            owner.get("kind") != CERTIFICATES.kind
            or owner.get("apiVersion") != CERTIFICATES.api_version
        ):
            return True
        other = self.certificates.get(str(owner.get("name")), namespace)
        return other is not None and other["metadata"].get("uid") == owner.get("uid")

    # Reading the Secret

    def _stored(self, secret: dict[str, Any] | None) -> _Stored | None:
        if secret is None:
            return None
        cert_pem, key_pem = _decode(secret, "tls.crt"), _decode(secret, "tls.key")
        if not cert_pem or not key_pem:
            return None
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError:
            return None
        return _Stored(cert, cert_pem, key_pem)

    def _trigger(
        self,
        cert: dict[str, Any],
        intent: intents.Intent,
        secret: dict[str, Any] | None,
        stored: _Stored | None,
        now: datetime.datetime,
    ) -> _Trigger | None:
        """Why a new certificate is needed now, or None when the Secret is right."""
        name = (cert.get("spec") or {}).get("secretName")
        if secret is None:
            return _Trigger(
                "DoesNotExist", f'Issuing certificate as Secret "{name}" does not exist'
            )
        if stored is None:
            return _Trigger(
                "MissingData",
                f'Issuing certificate as Secret "{name}" does not hold a certificate and key',
            )
        try:
            problem = self.signer.problem_with(stored.cert_pem, stored.key_pem)
            if problem is None and _decode(secret, "ca.crt") != self.signer.ca_pem:
                problem = "its ca.crt is not the cluster's root"
        except SigningError as exc:
            # The CA cannot be read: the issuance will fail and be backed off as a failure.
            problem = str(exc)
        if problem is not None:
            return _Trigger("IncorrectIssuer", f'Issuing certificate as Secret "{name}": {problem}')
        if stored.cert.serial_number in self.revoked:
            serial = revocations.serial_hex(stored.cert.serial_number)
            return _Trigger(
                "Revoked",
                f'Issuing certificate as the one in Secret "{name}" (serial {serial}) was revoked '
                f"(certificaterevocation/{self.revoked.name_of(stored.cert.serial_number) or serial})",
            )
        annotations = (secret.get("metadata") or {}).get("annotations") or {}
        if annotations.get(SPEC_HASH_ANNOTATION) != intent.fingerprint:
            return _Trigger(
                "SpecChanged", "Issuing certificate as the spec changed since the last issuance"
            )
        differs = intents.mismatch(intent, stored.cert)
        if differs is not None:
            return _Trigger(
                "SecretMismatch",
                f'Issuing certificate as the certificate in Secret "{name}" does not match the '
                f"spec: {differs}",
            )
        if now >= stored.cert.not_valid_after_utc:
            return _Trigger(
                "Expired",
                f"Issuing certificate as it expired at {_time(stored.cert.not_valid_after_utc)}",
            )
        renew_at = self._renewal_time(intent, stored.cert)
        if now >= renew_at:
            return _Trigger(
                "Renewing",
                f"Renewing certificate as renewal was scheduled at {_time(renew_at)}",
                still_ready=True,
            )
        return None

    @staticmethod
    def _renewal_time(intent: intents.Intent, cert: x509.Certificate) -> datetime.datetime:
        return renewal.renewal_time(
            cert.not_valid_before_utc, cert.not_valid_after_utc, intent.renew_before
        )

    @staticmethod
    def _ready_for(trigger: _Trigger) -> tuple[ConditionStatus, str, str]:
        if trigger.still_ready:
            return ("True", "Ready", "Certificate is up to date and has not expired")
        return ("False", trigger.reason, trigger.message)

    def _backoff_left(self, cert: dict[str, Any], now: datetime.datetime) -> float | None:
        """Seconds until a failed issuance may be retried, or None to try now. A spec changed
        since the failure is tried at once (the failure was about the old spec)."""
        status = cert.get("status") or {}
        failures = int(status.get("failedIssuanceAttempts") or 0)
        last = _parse_time(status.get("lastFailureTime"))
        if failures <= 0 or last is None:
            return None
        issuing = get_condition(cert, "Issuing") or {}
        if issuing.get("observedGeneration") != cert["metadata"].get("generation"):
            return None
        retry_at = renewal.next_attempt(
            last, failures, base=self.settings.backoff_base, cap=self.settings.backoff_cap
        )
        left = (retry_at - now).total_seconds()
        return left if left > 0 else None

    # Acting

    async def _issue(
        self,
        cert: dict[str, Any],
        ctx: Context,
        intent: intents.Intent,
        secret: dict[str, Any] | None,
        stored: _Stored | None,
        trigger: _Trigger,
    ) -> Result | None:
        await ctx.event(cert, "Issuing", trigger.message)
        cert = await self._write_status(
            cert,
            ctx,
            ready=self._ready_for(trigger),
            issuing=("True", trigger.reason, trigger.message),
        )
        # A revoked certificate's key may be what leaked: never reuse it.
        reuse = None if intent.rotate_key or stored is None or trigger.reason == "Revoked" else stored.key_pem
        try:
            issued = await asyncio.to_thread(self._sign, intent, reuse)
        except SigningError as exc:
            return await self._failed(cert, ctx, trigger, str(exc))
        written = await self._store(cert, intent, secret, issued)
        status = cert.get("status") or {}
        revision = int(status.get("revision") or 0) + 1
        leaf = issued.certificate
        renew_at = self._renewal_time(intent, leaf)
        fields = {
            "notBefore": _time(leaf.not_valid_before_utc),
            "notAfter": _time(leaf.not_valid_after_utc),
            "renewalTime": _time(renew_at),
            "serialNumber": format(leaf.serial_number, "x"),
            "revision": revision,
            # A success ends the failure streak (null removes the fields).
            "failedIssuanceAttempts": None,
            "lastFailureTime": None,
        }
        message = "The certificate has been successfully issued"
        await self._write_status(
            cert,
            ctx,
            ready=("True", "Ready", "Certificate is up to date and has not expired"),
            issuing=("False", "Issued", message),
            fields=fields,
        )
        await ctx.event(
            cert,
            "Issued",
            f'{message} into Secret "{written["metadata"]["name"]}" (revision {revision}, '
            f"serial {fields['serialNumber']}, expires {fields['notAfter']})",
        )
        now = datetime.datetime.now(datetime.UTC)
        return Result.requeue_after(max(0.0, (renew_at - now).total_seconds()))

    def _sign(self, intent: intents.Intent, reuse_pem: bytes | None) -> Issued:
        """Runs in a thread: key generation (RSA 4096 takes seconds) and signing."""
        key: keys.PrivateKey | None = None
        if reuse_pem is not None:
            try:
                existing = keys.load_pem(reuse_pem, source="tls.key")
            except ValueError:
                existing = None
            # rotationPolicy Never keeps the key only while it is the key the spec asks for.
            if existing is not None and keys.spec_of(existing) == intent.key:
                key = existing
        if key is None:
            key = keys.generate(intent.key)
        return self.signer.issue(intent.request, key)

    async def _store(
        self,
        cert: dict[str, Any],
        intent: intents.Intent,
        secret: dict[str, Any] | None,
        issued: Issued,
    ) -> dict[str, Any]:
        """Create or replace the Secret (with its resourceVersion: a concurrent change fails
        with 409 and the reconcile runs again)."""
        meta = cert["metadata"]
        name = str(cert["spec"]["secretName"])
        data = {
            "tls.crt": base64.b64encode(issued.cert_pem).decode("ascii"),
            "tls.key": base64.b64encode(issued.key_pem).decode("ascii"),
            "ca.crt": base64.b64encode(issued.ca_pem).decode("ascii"),
        }
        annotations = {
            CERTIFICATE_NAME_ANNOTATION: meta["name"],
            SPEC_HASH_ANNOTATION: intent.fingerprint,
        }
        if secret is None:
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": name,
                    "namespace": meta.get("namespace"),
                    "annotations": annotations,
                    "ownerReferences": [_owner_reference(cert)],
                },
                "type": TLS_SECRET_TYPE,
                "data": data,
            }
            written = await self.op.client.create(SECRETS, body, field_manager=self.op.name)
        else:
            old_meta = secret.get("metadata") or {}
            # A stale controller (a deleted Certificate) gives way; other owners stay.
            refs = [
                r
                for r in old_meta.get("ownerReferences") or []
                if not r.get("controller") and r.get("uid") != meta.get("uid")
            ]
            body = {
                **secret,
                "metadata": {
                    **old_meta,
                    "annotations": {**(old_meta.get("annotations") or {}), **annotations},
                    "ownerReferences": [*refs, _owner_reference(cert)],
                },
                # Other keys (a user's extras) are kept; the type is immutable in Kubernetes.
                "data": {**(secret.get("data") or {}), **data},
            }
            body.setdefault("type", TLS_SECRET_TYPE)
            written = await self.op.client.replace(SECRETS, body)
        self._recent_secrets.remember(written)
        return written

    async def revoke_on_delete(self, cert: dict[str, Any], ctx: Context) -> Result | None:
        """Revoke the serial a deleted Certificate last issued, and the one in its Secret when
        the Secret is still its own (a Secret held by another Certificate is left alone)."""
        meta = cert["metadata"]
        namespace = str(meta.get("namespace") or "default")
        leaves: dict[int, x509.Certificate | None] = {}
        status_serial = (cert.get("status") or {}).get("serialNumber")
        if isinstance(status_serial, str) and status_serial:
            try:
                leaves[int(status_serial, 16)] = None
            except ValueError:
                pass
        secret = self._recent_secrets.get(f"{namespace}/{(cert.get('spec') or {}).get('secretName')}")
        owner = _controller_ref(secret) if secret is not None else None
        stored = self._stored(secret) if (owner or {}).get("uid") == meta.get("uid") else None
        if stored is not None:
            leaves[stored.cert.serial_number] = stored.cert
        if not leaves:
            return None
        ref = revocations.CertificateRef(namespace=namespace, name=meta["name"], uid=meta.get("uid"))
        for serial, leaf in leaves.items():
            if serial in self.revoked:
                continue
            body = revocations.revocation(
                serial, reason="cessationOfOperation", certificate_ref=ref,
                subject=leaf.subject.rfc4514_string() if leaf is not None else None,
                issuer=leaf.issuer.rfc4514_string() if leaf is not None else None,
                not_after=leaf.not_valid_after_utc if leaf is not None else _parse_time((cert.get("status") or {}).get("notAfter")),
            )  # fmt: skip
            try:
                await self.op.client.create(REVOCATIONS, body, field_manager=self.op.name)
            except ApiError as exc:
                if exc.status != 409:  # 409: revoked already
                    raise
            await ctx.event(
                cert, "Revoked",
                f"Revoked serial {revocations.serial_hex(serial)} as the Certificate was deleted",
            )  # fmt: skip
        return None

    async def _adopt(self, cert: dict[str, Any], secret: dict[str, Any]) -> None:
        """Make this Certificate the controller of a Secret it issued that lost its owner (the
        Certificate was deleted and created again): the certificate in it is still right."""
        meta = secret.get("metadata") or {}
        refs = [
            r
            for r in meta.get("ownerReferences") or []
            if not r.get("controller") and r.get("uid") != cert["metadata"].get("uid")
        ]
        body = {**secret, "metadata": {**meta, "ownerReferences": [*refs, _owner_reference(cert)]}}
        self._recent_secrets.remember(await self.op.client.replace(SECRETS, body))

    async def _failed(
        self, cert: dict[str, Any], ctx: Context, trigger: _Trigger, error: str
    ) -> Result:
        status = cert.get("status") or {}
        failures = int(status.get("failedIssuanceAttempts") or 0) + 1
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        delay = renewal.backoff_delay(
            failures, base=self.settings.backoff_base, cap=self.settings.backoff_cap
        )
        message = (
            f"The certificate could not be issued (attempt {failures}), next try in "
            f"{renewal.format_duration(delay)}: {error}"
        )
        await self._write_status(
            cert,
            ctx,
            ready=self._ready_for(trigger),
            issuing=("False", "Failed", message),
            fields={"failedIssuanceAttempts": failures, "lastFailureTime": _time(now)},
        )
        await ctx.event(cert, "Failed", message, "Warning")
        left = (now + delay - datetime.datetime.now(datetime.UTC)).total_seconds()
        return Result.requeue_after(max(0.0, left))

    async def _up_to_date(
        self, cert: dict[str, Any], ctx: Context, intent: intents.Intent, stored: _Stored
    ) -> datetime.datetime:
        """Report a certificate that needs nothing (after a restart, or a status reset);
        returns its renewal time."""
        leaf = stored.cert
        renew_at = self._renewal_time(intent, leaf)
        status = cert.get("status") or {}
        fields: dict[str, Any] = {
            "notBefore": _time(leaf.not_valid_before_utc),
            "notAfter": _time(leaf.not_valid_after_utc),
            "renewalTime": _time(renew_at),
            "serialNumber": format(leaf.serial_number, "x"),
            "revision": int(status.get("revision") or 1),
        }
        issuing = get_condition(cert, "Issuing")
        done: tuple[ConditionStatus, str, str] | None = None
        if issuing is not None and issuing.get("status") != "False":
            done = ("False", "Issued", "The certificate has been successfully issued")
        await self._write_status(
            cert,
            ctx,
            ready=("True", "Ready", "Certificate is up to date and has not expired"),
            issuing=done,
            fields=fields,
        )
        return renew_at

    async def _invalid(self, cert: dict[str, Any], ctx: Context, message: str) -> None:
        before = get_condition(cert, "Ready") or {}
        generation = cert["metadata"].get("generation")
        await self._write_status(
            cert,
            ctx,
            ready=("False", "InvalidSpec", message),
            issuing=("False", "InvalidSpec", message),
        )
        # One Event per spec, not one per reconcile.
        if (before.get("reason"), before.get("message"), before.get("observedGeneration")) != (
            "InvalidSpec",
            message,
            generation,
        ):
            await ctx.event(cert, "InvalidSpec", message, "Warning")

    async def _write_status(
        self,
        cert: dict[str, Any],
        ctx: Context,
        *,
        ready: tuple[ConditionStatus, str, str],
        issuing: tuple[ConditionStatus, str, str] | None = None,
        fields: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One merge patch of /status if anything would change; returns the object as it is
        now (the written one, or `cert` when nothing changed)."""
        meta = cert["metadata"]
        generation = meta.get("generation")
        status = cert.get("status") or {}
        conditions = status.get("conditions")
        for type_, value in (("Ready", ready), ("Issuing", issuing)):
            if value is not None:
                conditions = set_condition(
                    conditions, type_, value[0], value[1], value[2], observed_generation=generation
                )
        patch: dict[str, Any] = {**(fields or {}), "conditions": conditions}
        if generation is not None:
            patch["observedGeneration"] = generation
        if not status_changes(status, patch):
            return cert
        try:
            written = await ctx.client.update_status(
                CERTIFICATES, meta["name"], meta.get("namespace"), patch, field_manager=self.op.name
            )
        except ApiError as exc:
            if exc.status == 404:  # deleted meanwhile: nothing to report on
                return cert
            raise
        self._recent_certificates.remember(written)
        return written




def setup(op: Operator, settings: CertificateSettings) -> CertificateController:
    """Register the certificates controller on `op`."""
    return CertificateController(op, settings)
