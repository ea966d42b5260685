"""Questions about authorisation, asked through the API: Kubernetes' review kinds.

These are not stored: a client POSTs a review and gets it back with `status` filled in. They are
what `kubectl auth can-i`, `kubectl auth can-i --list`, `kubectl auth whoami` and
`nexus auth can-i|whoami` send, and what an operator uses to check a user's rights before it acts.

- `authorization.k8s.io/v1` SelfSubjectAccessReview: may I do this? (resourceAttributes or
  nonResourceAttributes in `spec`; `status.allowed`, `status.reason`).
- SelfSubjectRulesReview: everything I may do in `spec.namespace` (`status.resourceRules`,
  `status.nonResourceRules`).
- SubjectAccessReview (cluster) and LocalSubjectAccessReview (namespaced): may that user do
  this? Asking about others needs `create` on these resources (cluster-admin, or `admin` for
  the local one in its namespace).
- `authentication.k8s.io/v1` SelfSubjectReview: who am I? (`status.userInfo`).

Every authenticated identity may ask about itself (the default `system:basic-user` role).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from hypermesh.api import errors, rbac

AUTHZ = "authorization.k8s.io"
AUTHN = "authentication.k8s.io"
# plural -> (group, kind, namespaced)
RESOURCES: dict[str, tuple[str, str, bool]] = {
    "selfsubjectaccessreviews": (AUTHZ, "SelfSubjectAccessReview", False),
    "selfsubjectrulesreviews": (AUTHZ, "SelfSubjectRulesReview", False),
    "subjectaccessreviews": (AUTHZ, "SubjectAccessReview", False),
    "localsubjectaccessreviews": (AUTHZ, "LocalSubjectAccessReview", True),
    "selfsubjectreviews": (AUTHN, "SelfSubjectReview", False),
}

Decide = Callable[[rbac.Attributes], Awaitable[rbac.Decision]]


def match(path: str) -> tuple[str, str | None] | None:
    """(plural, namespace) when `path` is a review endpoint, else None."""
    parts = [part for part in path.split("/") if part]
    if len(parts) < 4 or parts[0] != "apis" or parts[2] != "v1" or parts[1] not in (AUTHZ, AUTHN):
        return None
    rest = parts[3:]
    if len(rest) == 3 and rest[0] == "namespaces" and rest[2] == "localsubjectaccessreviews":
        return rest[2], rest[1]
    if len(rest) == 1 and rest[0] in RESOURCES and not RESOURCES[rest[0]][2] and RESOURCES[rest[0]][0] == parts[1]:
        return rest[0], None
    return None


def _spec_attributes(spec: dict[str, Any], user: str, groups: tuple[str, ...], *, namespace: str | None = None) -> rbac.Attributes:
    resource = spec.get("resourceAttributes")
    non_resource = spec.get("nonResourceAttributes")
    if isinstance(resource, dict):
        verb = str(resource.get("verb") or "")
        if not verb:
            raise _invalid("spec.resourceAttributes.verb", "Required value: the verb to check (get, list, create, ...)")
        ns = str(resource.get("namespace") or "")
        if namespace is not None:
            if ns and ns != namespace:
                raise _invalid("spec.resourceAttributes.namespace", f"must be {namespace!r}, the namespace of the request, got {ns!r}")
            ns = namespace
        return rbac.Attributes(
            user, groups, verb, str(resource.get("group") or ""), str(resource.get("resource") or ""),
            str(resource.get("subresource") or ""), ns, str(resource.get("name") or ""),
        )  # fmt: skip
    if isinstance(non_resource, dict):
        return rbac.Attributes(user, groups, str(non_resource.get("verb") or ""), path=str(non_resource.get("path") or ""))
    raise _invalid("spec", "exactly one of resourceAttributes or nonResourceAttributes is required")


async def answer(
    plural: str,
    namespace: str | None,
    body: dict[str, Any],
    *,
    user: str,
    groups: tuple[str, ...],
    decide: Decide,
    rules_for: Callable[[str], list[rbac.Rule]],
) -> dict[str, Any]:
    """Fill in a review's status. `decide` is the full authoriser (node rules, then RBAC);
    `rules_for(namespace)` lists the caller's RBAC rules there."""
    group, kind, _ = RESOURCES[plural]
    if not isinstance(body, dict) or body.get("kind") not in (None, kind):
        raise errors.bad_request(f"expected a {kind} ({group}/v1), got {body.get('kind') if isinstance(body, dict) else type(body).__name__}")
    found = body.get("spec")
    spec: dict[str, Any] = found if isinstance(found, dict) else {}
    review: dict[str, Any] = {"kind": kind, "apiVersion": f"{group}/v1", "metadata": body.get("metadata") or {}, "spec": spec}
    if plural == "selfsubjectreviews":
        review.pop("spec")
        review["status"] = {"userInfo": {"username": user, "groups": list(groups)}}
        return review
    if plural == "selfsubjectrulesreviews":
        ns = str(spec.get("namespace") or "")
        held = rules_for(ns)
        review["status"] = {
            "resourceRules": [_resource_rule(rule) for rule in held if not rule.non_resource_urls],
            "nonResourceRules": [{"verbs": sorted(rule.verbs), "nonResourceURLs": list(rule.non_resource_urls)} for rule in held if rule.non_resource_urls],
            "incomplete": False,
        }
        return review
    if plural in ("subjectaccessreviews", "localsubjectaccessreviews"):
        who = str(spec.get("user") or "")
        subject_groups = tuple(str(g) for g in spec.get("groups") or ())
        if not who and not subject_groups:
            raise _invalid("spec.user", "Required value: a user or groups to check")
        attrs = _spec_attributes(spec, who, subject_groups, namespace=namespace)
    else:
        attrs = _spec_attributes(spec, user, groups)
    decision = await decide(attrs)
    # As in Kubernetes, a refusal carries no reason (kubectl would print it after "no").
    review["status"] = {"allowed": decision.allowed, "reason": decision.reason if decision.allowed else ""}
    return review


def _invalid(field: str, message: str) -> errors.ApiError:
    return errors.invalid("SubjectAccessReview", AUTHZ, "", [{"type": "FieldValueInvalid", "field": field, "message": message}])


def _resource_rule(rule: rbac.Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"verbs": sorted(rule.verbs), "apiGroups": sorted(rule.api_groups), "resources": sorted(rule.resources)}
    if rule.resource_names:
        out["resourceNames"] = sorted(rule.resource_names)
    return out
