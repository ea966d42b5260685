"""The checks on writes of Roles and bindings that RBAC itself needs, and NodeRestriction.

Kubernetes stops privilege escalation through the RBAC API: a user who may create RoleBindings
must not thereby grant a role it does not hold, nor write a Role with rules it lacks. So, on a
create or update:

- a Role or ClusterRole is admitted when the writer holds every permission in it (where it
  applies: in the Role's namespace, or cluster-wide for a ClusterRole), or holds the `escalate`
  verb on that kind; a ClusterRole with an `aggregationRule` needs `escalate` (its rules are
  whatever other roles say, now and later);
- a RoleBinding or ClusterRoleBinding is admitted when the writer holds every permission of
  the role it references (in the binding's namespace, or cluster-wide), or holds the `bind`
  verb on that role;
- a binding's `roleRef` never changes (delete and recreate instead), as in Kubernetes.

Nodes (the node authoriser's identities) may create only their own Node and Lease.

The writer is the identity of the request being served (`authz.current_caller`); writes the
server makes itself (default roles at start) have no caller and are not checked.
"""

from __future__ import annotations

from typing import Any

from hypermesh.api import errors, nodeauthz, rbac
from hypermesh.api.authz import GROUP, Caller, current_caller
from hypermesh.resources.registry import ResourceType


def check(authorizer: rbac.Authorizer, rtype: ResourceType, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """Raise Forbidden (or Invalid for a changed roleRef) when the write must not happen."""
    caller = current_caller.get()
    if caller is None:
        return
    node = nodeauthz.node_name(caller.user, caller.groups)
    if node is not None and old is None:
        nodeauthz.check_create(node, rtype.group, rtype.plural, new)
    if rtype.group != GROUP:
        return
    if rtype.kind in ("Role", "ClusterRole"):
        _check_role(authorizer, caller, rtype, new)
    elif rtype.kind in ("RoleBinding", "ClusterRoleBinding"):
        if old is not None and old.get("roleRef") != new.get("roleRef"):
            raise errors.invalid(rtype.kind, GROUP, new["metadata"]["name"], [{"type": "FieldValueInvalid", "field": "roleRef", "message": "cannot change roleRef: delete the binding and create it again"}])
        _check_binding(authorizer, caller, rtype, new)


def _namespace(obj: dict[str, Any]) -> str:
    return str(obj["metadata"].get("namespace") or "")


def _holds_verb(authorizer: rbac.Authorizer, caller: Caller, verb: str, plural: str, namespace: str, name: str) -> bool:
    attrs = rbac.Attributes(caller.user, caller.groups, verb, GROUP, plural, "", namespace, name)
    return authorizer.authorize(attrs).allowed


def _check_role(authorizer: rbac.Authorizer, caller: Caller, rtype: ResourceType, role: dict[str, Any]) -> None:
    namespace, name = _namespace(role), role["metadata"]["name"]
    if _holds_verb(authorizer, caller, "escalate", rtype.plural, namespace, name):
        return
    if role.get("aggregationRule"):
        raise errors.forbidden(f'user "{caller.user}" may not create or change {rtype.kind} "{name}" with an aggregationRule: that needs the escalate verb on {rtype.plural}')
    wanted = [rbac.Rule.from_dict(rule) for rule in role.get("rules") or () if isinstance(rule, dict)]
    missing = rbac.uncovered(wanted, authorizer.rules_for(caller.user, caller.groups, namespace))
    if missing:
        raise _escalation(caller, f'{rtype.kind} "{name}"', missing)


def _check_binding(authorizer: rbac.Authorizer, caller: Caller, rtype: ResourceType, binding: dict[str, Any]) -> None:
    namespace = _namespace(binding)
    ref = binding.get("roleRef") or {}
    role_kind, role_name = str(ref.get("kind") or ""), str(ref.get("name") or "")
    role_plural = "clusterroles" if role_kind == "ClusterRole" else "roles"
    if _holds_verb(authorizer, caller, "bind", role_plural, namespace if role_kind == "Role" else "", role_name):
        return
    policy = authorizer.policy
    if role_kind == "ClusterRole":
        rules = policy.cluster_roles.get(role_name)
    else:
        rules = policy.roles.get((namespace, role_name))
    if rules is None:
        raise errors.forbidden(f'user "{caller.user}" may not bind {role_kind} "{role_name}": it does not exist (and binding a role before it exists needs the bind verb on it)')
    missing = rbac.uncovered(rules, authorizer.rules_for(caller.user, caller.groups, namespace))
    if missing:
        raise _escalation(caller, f'a binding to {role_kind} "{role_name}"', missing)


def _escalation(caller: Caller, what: str, missing: list[rbac.Rule]) -> errors.ApiError:
    shown = "; ".join(_describe(rule) for rule in missing[:5]) + (f"; and {len(missing) - 5} more" if len(missing) > 5 else "")
    return errors.forbidden(f'user "{caller.user}" may not create {what}: it would grant permissions the user does not hold ({shown})')


def _describe(rule: rbac.Rule) -> str:
    verbs = ",".join(sorted(rule.verbs))
    if rule.non_resource_urls:
        return f"{verbs} {','.join(rule.non_resource_urls)}"
    groups = ",".join(sorted(group or '""' for group in rule.api_groups))
    names = f" named {','.join(sorted(rule.resource_names))}" if rule.resource_names else ""
    return f"{verbs} {','.join(sorted(rule.resources))} in group {groups}{names}"
