"""The node authoriser: what a node agent may do, decided by what is bound to it.

A node's certificate names `system:node:<name>` in the group `system:nodes`. RBAC cannot say
"only the Instances bound to you", so nodes get this authoriser instead (Kubernetes' Node
authorizer and NodeRestriction admission, in one place). A node may:

- read and write its own Node (and its status), and create it when it joins;
- read and write its own Lease in `hypermesh-node-lease` (the heartbeat);
- list and watch Instances only through `fieldSelector=spec.nodeName=<name>`, read, update the
  status of, and delete (to finish a graceful deletion) the Instances bound to it;
- create and update Events, anywhere (it reports on what it runs);
- create CertificateSigningRequests (the API server stamps the node's name into them, and the
  approver signs a node's request only for that node) and read, by name, those it created:
  that is how a node renews its own certificate;
- read the CertificateRevocations (get, list, watch): the agent refuses revoked client
  certificates on its own endpoint, and serials are no secret;
- nothing else: not another node's Node, Lease or Instances, not Secrets, not Workloads.

A write whose target has no name in the URL (a create) is allowed here and its name checked on
the object by `check_create` before it is stored. Anything the rules above do not allow falls
through to RBAC, where a node holds nothing unless an administrator bound it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from hypermesh.api import errors, rbac

NODES_GROUP = "system:nodes"
NODE_USER_PREFIX = "system:node:"
LEASE_NAMESPACE = "hypermesh-node-lease"
HM = "hypermesh.io"
CERTIFICATES = "certificates.k8s.io"

# (group, plural, namespace, name) -> the stored object or None.
Lookup = Callable[[str, str, str | None, str], Awaitable[dict[str, Any] | None]]

_READ = frozenset({"get", "list", "watch"})
_OWN_WRITE = frozenset({"update", "patch"})


def node_name(user: str, groups: tuple[str, ...]) -> str | None:
    """The node an identity speaks for, or None when it is not a node."""
    if NODES_GROUP not in groups or not user.startswith(NODE_USER_PREFIX):
        return None
    return user[len(NODE_USER_PREFIX):] or None


async def authorize(attrs: rbac.Attributes, node: str, *, field_node: str | None, lookup: Lookup) -> rbac.Decision | None:
    """Allow what a node may do; None when these rules do not allow it (RBAC decides then).

    `field_node` is the value of a `spec.nodeName=` field selector on a list or watch."""
    if not attrs.resource_request:
        return None
    allowed = await _allowed(attrs, node, field_node=field_node, lookup=lookup)
    return rbac.Decision(True, f'allowed by the node authoriser for node "{node}"') if allowed else None


async def _allowed(attrs: rbac.Attributes, node: str, *, field_node: str | None, lookup: Lookup) -> bool:
    group, resource, verb, sub = attrs.api_group, attrs.resource, attrs.verb, attrs.subresource
    if group == HM and resource == "nodes":
        if verb == "create" and not sub:
            return True  # the name is checked on the object (check_create)
        return attrs.name == node and (verb in _READ or verb in _OWN_WRITE) and sub in ("", "status")
    if group == "coordination.k8s.io" and resource == "leases" and attrs.namespace == LEASE_NAMESPACE:
        if verb == "create":
            return True
        return attrs.name == node and (verb in _READ or verb in _OWN_WRITE)
    if group in ("", "events.k8s.io") and resource == "events":
        return verb in ("create", "update", "patch")
    if group == HM and resource == "certificaterevocations":
        return verb in _READ and not sub
    if group == CERTIFICATES and resource == "certificatesigningrequests" and not sub:
        if verb == "create":
            return True
        if verb != "get" or not attrs.name:
            return False
        request = await lookup(CERTIFICATES, "certificatesigningrequests", None, attrs.name)
        return request is not None and (request.get("spec") or {}).get("username") == NODE_USER_PREFIX + node
    if group == HM and resource == "instances":
        if verb in ("list", "watch") and not sub:
            return field_node == node
        if not attrs.name or not attrs.namespace:
            return False
        permitted = (verb == "get" and not sub) or (verb in _OWN_WRITE and sub == "status") or (verb == "delete" and not sub)
        if not permitted:
            return False
        instance = await lookup(HM, "instances", attrs.namespace, attrs.name)
        return instance is not None and (instance.get("spec") or {}).get("nodeName") == node
    return False


def check_create(node: str, group: str, plural: str, obj: dict[str, Any]) -> None:
    """Refuse a node's create of another node's Node or Lease (NodeRestriction)."""
    name = (obj.get("metadata") or {}).get("name")
    if group == HM and plural == "nodes" and name != node:
        raise errors.forbidden(f'node "{node}" may not create Node "{name}": a node registers only itself')
    if group == "coordination.k8s.io" and plural == "leases" and name != node:
        raise errors.forbidden(f'node "{node}" may not create Lease "{name}": a node holds only its own Lease')
