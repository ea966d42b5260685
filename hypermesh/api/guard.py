"""Every request's authorisation and audit record, in one place in front of the routes.

The app asks `Guard.authorize` once per authenticated request, after parsing the URL and before
doing anything: the node authoriser answers first for node identities (what is bound to them),
then RBAC. A refusal is Kubernetes' 403 naming the user and the request. `Guard.audited` wraps
the ASGI `send` so that the audit log gets one line when the answer starts (its code known;
for a watch or a log follow that is when the stream opens, so a long stream is on record from
its first second, not from its end).

The check's cost is what the benchmark `bench/rbac_bench.py` measures: a dict lookup for a
request shape seen before, a walk over the caller's own grants otherwise.
"""

from __future__ import annotations

import time
from typing import Any

from hypermesh.api import audit, authz, nodeauthz, paths, rbac, reviews
from hypermesh.api.http import Request, Send
from hypermesh.api.storage import ObjectStorage
from hypermesh.resources.registry import Registry

ANONYMOUS = "system:anonymous"
UNAUTHENTICATED = ("system:unauthenticated",)
_FIELD_NAMES = ("metadata.name",)
_FIELD_NODES = ("spec.nodeName",)


class Guard:
    """Authorisation (node rules, then RBAC) and the audit log for the app."""

    def __init__(self, policy: authz.PolicySource, storage: ObjectStorage, registry: Registry, log: audit.AuditLog | None) -> None:
        self.policy = policy
        self.storage = storage
        self.registry = registry
        self.log = log

    # Deciding

    async def decide(self, attrs: rbac.Attributes, *, field_node: str | None = None) -> rbac.Decision:
        """The answer for `attrs`: node rules for node identities, then RBAC."""
        node = nodeauthz.node_name(attrs.user, attrs.groups)
        if node is not None:
            decision = await nodeauthz.authorize(attrs, node, field_node=field_node, lookup=self._lookup)
            if decision is not None:
                return decision
        return self.policy.authorizer.authorize(attrs)

    async def _lookup(self, group: str, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        rtype = self.registry.by_plural(group, "v1", plural)
        if rtype is None:
            return None
        return await self.storage.get(rtype, namespace, name)

    async def authorize(self, req: Request, target: paths.Target | paths.GroupVersionPath | None) -> rbac.Attributes:
        """Raise 403 unless the caller may make this request; the question asked otherwise."""
        identity = req.identity
        user, groups = identity.user, authz.groups_of(identity.groups)
        field_node = None
        if isinstance(target, paths.Target):
            field_name = _field_value(req, _FIELD_NAMES)
            field_node = _field_value(req, _FIELD_NODES)
            attrs = authz.resource_attributes(
                user, groups, req.method, target.rtype, namespace=target.namespace, name=target.name,
                subresource=target.subresource, watch=req.flag("watch"), field_name=field_name,
            )  # fmt: skip
        else:
            review = reviews.match(req.path) if req.method == "POST" else None
            if review is not None:
                plural, namespace = review
                group = reviews.RESOURCES[plural][0]
                attrs = rbac.Attributes(user, groups, "create", group, plural, "", namespace or "")
            else:
                attrs = authz.path_attributes(user, groups, req.method, req.path)
        req.extra["authz"] = attrs
        decision = await self.decide(attrs, field_node=field_node)
        req.extra["decision"] = decision.reason
        if not decision.allowed:
            raise authz.forbidden(attrs)
        authz.current_caller.set(authz.Caller(user, groups))
        return attrs

    def rules_for(self, req: Request, namespace: str) -> list[rbac.Rule]:
        identity = req.identity
        return self.policy.authorizer.rules_for(identity.user, authz.groups_of(identity.groups), namespace)

    # Recording

    def audited(self, req: Request, send: Send) -> Send:
        """`send`, recording the request in the audit log when its answer starts."""
        log = self.log
        if log is None:
            return send
        started = time.monotonic()

        async def recording_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                log.record(self._entry(req, int(message["status"]), started))
            await send(message)

        return recording_send

    def _entry(self, req: Request, code: int, started: float) -> dict[str, Any]:
        attrs: rbac.Attributes | None = req.extra.get("authz")
        identity = req.identity
        if attrs is None:
            user = identity.user if identity is not None else ANONYMOUS
            groups = authz.groups_of(identity.groups) if identity is not None else UNAUTHENTICATED
            verb = req.method.lower()
            return audit.entry(user=user, groups=groups, verb=verb, code=code, started=started, path=req.path)
        return audit.entry(
            user=attrs.user, groups=attrs.groups, verb=attrs.verb, code=code, started=started,
            api_group=attrs.api_group, resource=attrs.resource, subresource=attrs.subresource,
            namespace=attrs.namespace, name=attrs.name, path=attrs.path, decision=req.extra.get("decision", ""),
        )  # fmt: skip


def _field_value(req: Request, fields: tuple[str, ...]) -> str | None:
    """The value a `fieldSelector` requires of one of `fields` (`f=v` or `f==v`), if any."""
    selector = req.query.get("fieldSelector")
    if not selector:
        return None
    for term in selector.split(","):
        key, sep, value = term.partition("=")
        if not sep or key.endswith("!"):
            continue
        value = value[1:] if value.startswith("=") else value
        if key.strip() in fields:
            return value.strip()
    return None
