"""What the API server itself enforces on CertificateSigningRequests (certificates.k8s.io/v1).

A signer decides by who asked: a node may get a certificate for itself, a bootstrap token holder
for a new node. So, as in Kubernetes, the requester is never taken from the client:

- on create, `spec.username`, `spec.groups` and `spec.extra` are replaced by the identity of
  the request that creates the object (`spec.uid` is dropped: certificates and bootstrap tokens
  carry none). A client certificate is named in `extra` under
  `authentication.kubernetes.io/credential-id` (`X509SHA256=<hex>`), so a renewal says which
  certificate asked for it;
- `spec.request` must be a PEM certificate request with a valid signature;
- `spec` never changes after create (an update keeps the stored spec, as Kubernetes' update
  strategy does);
- in `status`, Approved and Denied exclude each other and, once set, are never removed, and an
  issued `certificate` is never replaced; a certificate must be PEM.

Kubernetes sets Approved/Denied only through an `approval` subresource. HyperMesh has no such
subresource yet: approval is a write of the condition through `status`, which RBAC gives to the
controllers and cluster admins only (`kubectl certificate approve` needs the subresource).

`Admission` adds these rules to the server's per-kind admission (`admission.Admission`).
"""

from __future__ import annotations

import base64
import contextvars
import copy
from typing import Any

from hypermesh.api import admission, authz, errors
from hypermesh.pki import csr
from hypermesh.resources.registry import ResourceType

GROUP = "certificates.k8s.io"
KIND = "CertificateSigningRequest"
APPROVAL_TYPES = ("Approved", "Denied")

# The client certificate (PEM) of the request being served, for `extra`; set by the app for
# writes of this kind, unset for requests without one (tokens, in-process clients).
current_client_certificate: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_client_certificate", default=None)


def is_csr(rtype: ResourceType) -> bool:
    return rtype.group == GROUP and rtype.kind == KIND


def client_certificate_of(tls: Any) -> str | None:
    """The leaf client certificate in an ASGI `tls` extension, as PEM, or None."""
    if not isinstance(tls, dict):
        return None
    chain = tls.get("client_cert_chain") or []
    return chain[0] if chain and isinstance(chain[0], str) else None


def admit(old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """Apply the rules above to a write of `new` (the successor of `old`, None on create)."""
    name = str(new["metadata"].get("name") or "")
    if old is None:
        _stamp_requester(new)
        _check_request(new, name)
    else:
        new["spec"] = copy.deepcopy(old.get("spec") or {})
    _check_status(old, new, name)


def _stamp_requester(new: dict[str, Any]) -> None:
    caller = authz.current_caller.get()
    if caller is None:
        return  # the server's own write: nobody to stamp
    spec = new.setdefault("spec", {})
    spec["username"] = caller.user
    spec["groups"] = list(caller.groups)
    spec.pop("uid", None)
    spec.pop("extra", None)
    pem = current_client_certificate.get()
    if pem:
        try:
            chain = csr.load_chain(pem.encode())
        except ValueError:
            return
        spec["extra"] = {csr.CREDENTIAL_ID_KEY: [csr.certificate_credential_id(chain[0])]}


def _check_request(new: dict[str, Any], name: str) -> None:
    request = (new.get("spec") or {}).get("request")
    try:
        csr.load_request(base64.b64decode(str(request), validate=True))
    except ValueError as exc:
        raise _invalid(name, "spec.request", f"Invalid value: {exc}") from None


def _conditions(obj: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    found = ((obj or {}).get("status") or {}).get("conditions") or []
    return {str(c.get("type")): c for c in found if isinstance(c, dict)}


def _check_status(old: dict[str, Any] | None, new: dict[str, Any], name: str) -> None:
    causes = []
    conditions = _conditions(new)
    if all(conditions.get(kind, {}).get("status") == "True" for kind in APPROVAL_TYPES):
        causes.append(("status.conditions", "Invalid value: Approved and Denied conditions are mutually exclusive"))
    before = _conditions(old)
    for kind in APPROVAL_TYPES:
        if kind in before and kind not in conditions:
            causes.append(("status.conditions", f"Forbidden: updates may not remove the {kind} condition"))
    old_certificate = ((old or {}).get("status") or {}).get("certificate")
    certificate = (new.get("status") or {}).get("certificate")
    if old_certificate and certificate != old_certificate:
        causes.append(("status.certificate", "Forbidden: updates may not modify an issued certificate"))
    elif certificate and certificate != old_certificate:
        try:
            csr.load_chain(base64.b64decode(str(certificate), validate=True))
        except ValueError as exc:
            causes.append(("status.certificate", f"Invalid value: {exc}"))
    if causes:
        raise errors.invalid(KIND, GROUP, name, [{"type": "FieldValueInvalid", "field": field, "message": message} for field, message in causes])


def _invalid(name: str, field: str, message: str) -> errors.ApiError:
    return errors.invalid(KIND, GROUP, name, [{"type": "FieldValueInvalid", "field": field, "message": message}])


class Admission(admission.Admission):
    """The server's admission, plus the CertificateSigningRequest rules."""

    async def before_write(self, rtype: ResourceType, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        await super().before_write(rtype, old, new)
        if is_csr(rtype):
            admit(old, new)
