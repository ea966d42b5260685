"""The csrsigning controller: approves node client certificate requests and signs them.

Kubernetes splits this between kube-controller-manager's `csrapproving` (approve what RBAC
says may be approved) and `csrsigning` (sign what was approved), plus `csrcleaner`; here one
reconcile of each CertificateSigningRequest does all three, for the signer
`kubernetes.io/kube-apiserver-client-kubelet` (other signers' requests are left alone, except
that they are cleaned up too).

Approval follows the Kubernetes approver. A request is a node client request when its subject
is `CN=system:node:<name>, O=system:nodes`, it names nothing else (no DNS names, IPs, e-mail
addresses or URIs) and asks for client auth (with digital signature, and key encipherment for
RSA keys) and nothing more. Then:

- when the requester (`spec.username`, stamped by the API server, never the client's word) is
  that node itself, it is a renewal ("selfnodeclient");
- otherwise it is a new node's first certificate ("nodeclient");

and it is approved when a SubjectAccessReview says the requester may `create`
`certificatesigningrequests/<selfnodeclient|nodeclient>`: the default bindings give the first
to `system:nodes` and the second to `system:bootstrappers` (bootstrap token holders). Unlike
Kubernetes, which leaves such requests pending, anything else asked of this signer is Denied
with the reason, so a node waiting for its certificate learns at once that it will not come
(a node asking for another node's name, a token asking for `system:masters`).

An approved request (by this controller or by an administrator writing the Approved condition)
is signed by the cluster's intermediate CA through a `Signer`, for at most `max_duration`
(`spec.expirationSeconds` can only shorten it), and `status.certificate` gets the leaf and the
intermediate. A request the signer cannot honour even when approved gets a Failed condition.

Requests are deleted an hour after they finished (issued, denied or failed) and a day after
they were made if they are still pending, as Kubernetes' csrcleaner does: a node renewing every
day leaves no pile behind.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from hypermesh.client.errors import ApiError
from hypermesh.client.kinds import CSRS
from hypermesh.operator import Context, Operator, Result
from hypermesh.operator.conditions import now_rfc3339
from hypermesh.operator.informer import object_key
from hypermesh.pki import csr
from hypermesh.pki.profile import LeafRequest, normalize_usages
from hypermesh.pki.signer import Signer, SigningError

log = logging.getLogger(__name__)

SUBJECT_ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
_NODE_CLIENT_USAGES = frozenset({"digital signature", "key encipherment", "client auth"})
_MAX_BACKDATE = datetime.timedelta(minutes=5)

RequestKind = Literal["selfnodeclient", "nodeclient"]
# (user, groups, extra, subresource) -> whether the user may create that subresource of CSRs.
Authorize = Callable[[str, Sequence[str], dict[str, Any], str], Awaitable[bool]]


@dataclass(frozen=True)
class CSRSigningSettings:
    """How node client certificates are approved, signed and cleaned up."""

    signer: Signer
    # The longest certificate issued (kube-controller-manager's cluster-signing-duration);
    # `spec.expirationSeconds` may ask for less. Tests shorten it to seconds.
    max_duration: datetime.timedelta = datetime.timedelta(hours=24)
    keep_finished: datetime.timedelta = datetime.timedelta(hours=1)
    keep_pending: datetime.timedelta = datetime.timedelta(hours=24)


@dataclass(frozen=True)
class Verdict:
    """What the approver concluded: approved or not, and the condition's reason and message."""

    approved: bool
    reason: str
    message: str


# The shape of a node client request


def node_client_problem(request: x509.CertificateSigningRequest, usages: Sequence[str]) -> str | None:
    """Why `request` is not a node client certificate request, or None when it is one."""
    common_name, organizations = csr.subject_parts(request)
    if not common_name.startswith(csr.NODE_USER_PREFIX) or common_name == csr.NODE_USER_PREFIX:
        return f"the subject's common name must be system:node:<node name>, not {common_name!r}"
    if organizations != (csr.NODES_GROUP,):
        return f"the subject's organization must be exactly [system:nodes], not {list(organizations)}"
    try:
        names = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = None
    if names is not None and len(names):
        return "a node client certificate names no DNS names, IP addresses, e-mail addresses or URIs"
    wanted = set(usages)
    if "client auth" not in wanted:
        return f"usages must include client auth (got {sorted(wanted)})"
    extra = wanted - _NODE_CLIENT_USAGES
    if extra:
        return f"usages may be only digital signature, key encipherment and client auth (got also {sorted(extra)})"
    if "key encipherment" in wanted and not isinstance(request.public_key(), rsa.RSAPublicKey):
        return "key encipherment is only for RSA keys"
    return None


def classify(username: str, request: x509.CertificateSigningRequest, usages: Sequence[str]) -> tuple[RequestKind | None, str]:
    """(kind, node name) of a node client request, or (None, why it is none)."""
    problem = node_client_problem(request, usages)
    if problem is not None:
        return None, problem
    common_name, _ = csr.subject_parts(request)
    node = common_name[len(csr.NODE_USER_PREFIX):]
    return ("selfnodeclient" if username == common_name else "nodeclient"), node


async def approval(spec: dict[str, Any], request: x509.CertificateSigningRequest, authorize: Authorize) -> Verdict:
    """The approver's verdict on a request of the node client signer."""
    username = str(spec.get("username") or "")
    groups = [str(g) for g in spec.get("groups") or ()]
    extra = spec.get("extra") if isinstance(spec.get("extra"), dict) else {}
    kind, detail = classify(username, request, [str(u) for u in spec.get("usages") or ()])
    if kind is None:
        return Verdict(False, "NotNodeClientRequest", f"{csr.NODE_CLIENT_SIGNER} signs node client certificates only: {detail}")
    if await authorize(username, groups, extra or {}, kind):
        if kind == "selfnodeclient":
            return Verdict(True, "AutoApproved", f"Auto approving node {detail}'s renewal of its client certificate after SubjectAccessReview.")
        return Verdict(True, "AutoApproved", f"Auto approving node {detail}'s client certificate after SubjectAccessReview.")
    if kind == "nodeclient" and username.startswith(csr.NODE_USER_PREFIX):
        message = f'{username} may not request a certificate for node "{detail}": a node gets certificates only for itself'
    else:
        message = (
            f"{username or 'an unknown user'} may not {'renew its node certificate' if kind == 'selfnodeclient' else 'request node client certificates'}: "
            f"nothing grants it create on certificatesigningrequests/{kind}"
        )
    return Verdict(False, "NotAuthorized", message)


def leaf_request(request: x509.CertificateSigningRequest, spec: dict[str, Any], max_duration: datetime.timedelta) -> LeafRequest:
    """What to sign for an approved node client request (its subject, usages and lifetime)."""
    common_name, organizations = csr.subject_parts(request)
    lifetime = max_duration
    seconds = spec.get("expirationSeconds")
    if isinstance(seconds, int) and not isinstance(seconds, bool) and seconds > 0:
        lifetime = min(lifetime, datetime.timedelta(seconds=seconds))
    return LeafRequest(
        common_name=common_name,
        organizations=organizations,
        usages=normalize_usages(str(u) for u in spec.get("usages") or ()),
        lifetime=lifetime,
        # Back-dated for clocks running behind, but never by much of a short lifetime (the
        # node renews at two thirds of notBefore..notAfter).
        backdate=min(_MAX_BACKDATE, lifetime / 10),
    )


# The controller


def _parse_time(text: Any) -> datetime.datetime | None:
    try:
        return datetime.datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None


def _rv(obj: dict[str, Any] | None) -> int:
    try:
        return int(((obj or {}).get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def _condition(kind: str, reason: str, message: str) -> dict[str, Any]:
    now = now_rfc3339()
    return {"type": kind, "status": "True", "reason": reason, "message": message, "lastUpdateTime": now, "lastTransitionTime": now}


class CSRSigningController:
    """The reconcile of CertificateSigningRequests over their informer."""

    def __init__(self, op: Operator, settings: CSRSigningSettings) -> None:
        self.settings = settings
        self.client = op.client
        self.informer = op.informer(CSRS)
        # Status this controller wrote, until the cache has caught up (so a reconcile woken by
        # its own write neither approves nor signs twice).
        self._written: dict[str, dict[str, Any]] = {}
        self.informer.subscribe(self._on_event)
        op.reconcile(CSRS)(self.reconcile)

    def _on_event(self, event: str, obj: dict[str, Any]) -> None:
        if event == "DELETED":
            self._written.pop(object_key(obj), None)

    def _newest(self, obj: dict[str, Any]) -> dict[str, Any]:
        key = object_key(obj)
        written = self._written.get(key)
        if written is None:
            return obj
        if _rv(obj) >= _rv(written):
            del self._written[key]
            return obj
        return written

    async def reconcile(self, obj: dict[str, Any], ctx: Context) -> Result | None:
        """Clean up, approve or deny, and sign one request."""
        obj = self._newest(obj)
        meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
        conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
        types = {str(c.get("type")) for c in conditions if c.get("status") == "True"}
        finished = bool(status.get("certificate")) or bool(types & {"Denied", "Failed"})
        created = _parse_time(meta.get("creationTimestamp")) or datetime.datetime.now(datetime.UTC)
        keep = self.settings.keep_finished if finished else self.settings.keep_pending
        left = created + keep - datetime.datetime.now(datetime.UTC)
        if left <= datetime.timedelta(0):
            await self._delete(meta["name"])
            return None
        if finished or spec.get("signerName") != csr.NODE_CLIENT_SIGNER:
            return Result.requeue_after(left.total_seconds())
        try:
            request = csr.load_request(base64.b64decode(str(spec.get("request")), validate=True))
        except ValueError as exc:
            await self._write(obj, [*conditions, _condition("Failed", "InvalidRequest", str(exc))], None)
            return Result.requeue_after(self.settings.keep_finished.total_seconds())
        if "Approved" not in types:
            verdict = await approval(spec, request, self._authorize)
            if not verdict.approved:
                log.info("denied certificate request %s of %s: %s", meta["name"], spec.get("username"), verdict.message)
                await self._write(obj, [*conditions, _condition("Denied", verdict.reason, verdict.message)], None)
                return Result.requeue_after(self.settings.keep_finished.total_seconds())
            conditions = [*conditions, _condition("Approved", verdict.reason, verdict.message)]
        certificate = None
        problem = node_client_problem(request, [str(u) for u in spec.get("usages") or ()])
        public_key = request.public_key()
        if problem is None and not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
            problem = f"{type(public_key).__name__} keys are not signed"
        if problem is not None:
            conditions.append(_condition("Failed", "SignerValidationFailure", problem))
        else:
            leaf = leaf_request(request, spec, self.settings.max_duration)
            try:
                issued, chain = await asyncio.to_thread(self.settings.signer.sign, leaf, public_key)  # type: ignore[arg-type]
            except SigningError as exc:
                # The CA cannot sign now (files missing, expired): retried with backoff.
                raise RuntimeError(f"cannot sign certificate request {meta['name']}: {exc}") from exc
            certificate = base64.b64encode(chain).decode()
            log.info("issued %s (serial %x, until %s) for request %s of %s", leaf.common_name, issued.serial_number,
                     issued.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"), meta["name"], spec.get("username"))  # fmt: skip
        await self._write(obj, conditions, certificate)
        return Result.requeue_after(self.settings.keep_finished.total_seconds())

    async def _authorize(self, user: str, groups: Sequence[str], extra: dict[str, Any], subresource: str) -> bool:
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": list(groups),
                "extra": extra,
                "resourceAttributes": {"group": CSRS.group, "resource": CSRS.plural, "verb": "create", "subresource": subresource},
            },
        }
        _, _, body = await self.client.request("POST", SUBJECT_ACCESS_REVIEWS, body=review)
        answer = orjson.loads(body) if body else {}
        return bool(((answer or {}).get("status") or {}).get("allowed"))

    async def _write(self, obj: dict[str, Any], conditions: list[dict[str, Any]], certificate: str | None) -> None:
        meta = obj["metadata"]
        status: dict[str, Any] = {"conditions": conditions}
        if certificate is not None:
            status["certificate"] = certificate
        # The resourceVersion makes this a compare-and-swap: approving or signing a request
        # someone else changed meanwhile fails (409) and is retried on the newer object.
        patch = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status}
        updated = await self.client.patch(CSRS, meta["name"], None, patch, subresource="status", field_manager="hypermesh-csrsigning")
        self._written[object_key(updated)] = updated

    async def _delete(self, name: str) -> None:
        try:
            await self.client.delete(CSRS, name)
        except ApiError as exc:
            if exc.status != 404:
                raise


def setup(op: Operator, settings: CSRSigningSettings) -> CSRSigningController:
    """Register the controller on `op`."""
    return CSRSigningController(op, settings)


__all__ = [
    "CSRS",
    "CSRSigningController",
    "CSRSigningSettings",
    "Verdict",
    "approval",
    "classify",
    "leaf_request",
    "node_client_problem",
    "setup",
]
