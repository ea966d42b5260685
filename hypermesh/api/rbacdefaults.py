"""The roles and bindings every cluster starts with, as Kubernetes' bootstrap policy has them.

- `cluster-admin` (everything), bound to the group `system:masters` (the admin kubeconfig's
  certificate and the in-process controllers).
- `admin`, `edit`, `view`: the user-facing roles, meant to be granted per namespace with a
  RoleBinding. They are aggregated, exactly as in Kubernetes: `view` collects every ClusterRole
  labelled `rbac.authorization.k8s.io/aggregate-to-view: "true"`, `edit` those labelled
  aggregate-to-edit (and `view` carries that label), `admin` those labelled aggregate-to-admin
  (and `edit` carries it). A CRD's author extends all three by creating a labelled ClusterRole.
  `view` cannot read Secrets (reading a token would be more than viewing); `edit` can, and can
  exec into Instances; only `admin` manages Roles and RoleBindings inside its namespace.
- `system:discovery`, `system:basic-user` and `system:public-info-viewer` let every
  authenticated identity read discovery and the version and ask what it may do
  (`SelfSubjectAccessReview`, `SelfSubjectReview`): a new user can find out that it can do
  nothing else.
- Node join, as kubeadm sets it up: `system:node-bootstrapper` (create and read
  CertificateSigningRequests) bound to `system:bootstrappers`, the holders of bootstrap tokens.
  Whether a node client certificate request is approved automatically is RBAC too, as the
  Kubernetes approver asks it: `create` on `certificatesigningrequests/nodeclient` (a new
  node's first certificate; bound to `system:bootstrappers`) and on
  `certificatesigningrequests/selfnodeclient` (a node renewing its own; bound to
  `system:nodes`). Deleting a binding turns that kind of automatic approval off.

These objects carry `rbac.authorization.kubernetes.io/autoupdate: "true"`: the server puts
their rules back at every start (so an upgrade adds permissions for new kinds), unless an
operator set the annotation to "false" to keep an edited version.
"""

from __future__ import annotations

import copy
from typing import Any

API_VERSION = "rbac.authorization.k8s.io/v1"
AUTOUPDATE = "rbac.authorization.kubernetes.io/autoupdate"
BOOTSTRAP_LABELS = {"kubernetes.io/bootstrapping": "rbac-defaults"}
AGGREGATE_TO = "rbac.authorization.k8s.io/aggregate-to-{}"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
MASTERS = "system:masters"

READ = ["get", "list", "watch"]
WRITE = ["create", "delete", "deletecollection", "patch", "update"]
HM = "hypermesh.io"
CERTIFICATES = "certificates.k8s.io"
BOOTSTRAPPERS = "system:bootstrappers"
NODES = "system:nodes"
NODE_CLIENT_ROLE = "system:certificates.k8s.io:certificatesigningrequests:nodeclient"
SELF_NODE_CLIENT_ROLE = "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient"
# The namespaced kinds a tenant works with, by API group.
_WORKLOAD_KINDS = {HM: ["workloads", "workloads/scale", "instances", "services", "endpoints", "certificates", "gitsyncs"]}
_STATUS_VIEWS = {HM: ["workloads/status", "instances/status", "services/status", "certificates/status", "gitsyncs/status"]}


def _rule(verbs: list[str], groups: list[str], resources: list[str], names: list[str] | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"apiGroups": groups, "resources": resources, "verbs": verbs}
    if names:
        rule["resourceNames"] = names
    return rule


def _url_rule(verbs: list[str], urls: list[str]) -> dict[str, Any]:
    return {"nonResourceURLs": urls, "verbs": verbs}


def _cluster_role(name: str, rules: list[dict[str, Any]], *, labels: dict[str, str] | None = None, aggregate_from: list[str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {**BOOTSTRAP_LABELS, **(labels or {})}, "annotations": {AUTOUPDATE: "true"}}
    role: dict[str, Any] = {"apiVersion": API_VERSION, "kind": "ClusterRole", "metadata": meta, "rules": rules}
    if aggregate_from:
        role["aggregationRule"] = {
            "clusterRoleSelectors": [{"matchLabels": {AGGREGATE_TO.format(target): "true"}} for target in aggregate_from]
        }
    return role


def _cluster_binding(name: str, role: str, groups: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": dict(BOOTSTRAP_LABELS), "annotations": {AUTOUPDATE: "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group} for group in groups],
    }


def _view_rules() -> list[dict[str, Any]]:
    rules = [_rule(READ, [group], kinds + _STATUS_VIEWS.get(group, [])) for group, kinds in _WORKLOAD_KINDS.items()]
    rules += [
        _rule(["get"], [HM], ["instances/log"]),
        _rule(READ, [""], ["namespaces", "events"]),
        _rule(READ, ["events.k8s.io"], ["events"]),
    ]
    return rules


def _edit_rules() -> list[dict[str, Any]]:
    rules = [_rule(WRITE, [group], kinds) for group, kinds in _WORKLOAD_KINDS.items()]
    rules += [
        _rule(["create"], [HM], ["instances/exec"]),
        _rule(["get"], [HM], ["instances/exec"]),
        _rule(READ + WRITE, [""], ["secrets"]),
        _rule(READ + WRITE, ["coordination.k8s.io"], ["leases"]),
    ]
    return rules


def _admin_rules() -> list[dict[str, Any]]:
    return [
        _rule(READ + WRITE, ["rbac.authorization.k8s.io"], ["roles", "rolebindings"]),
        _rule(["create"], ["authorization.k8s.io"], ["localsubjectaccessreviews"]),
    ]


def cluster_roles() -> list[dict[str, Any]]:
    """The default ClusterRoles (fresh copies: callers may change them)."""
    return copy.deepcopy(
        [
            _cluster_role("cluster-admin", [_rule(["*"], ["*"], ["*"]), _url_rule(["*"], ["*"])]),
            _cluster_role("admin", [], aggregate_from=["admin"]),
            _cluster_role("edit", [], labels={AGGREGATE_TO.format("admin"): "true"}, aggregate_from=["edit"]),
            _cluster_role("view", [], labels={AGGREGATE_TO.format("edit"): "true"}, aggregate_from=["view"]),
            _cluster_role("system:aggregate-to-admin", _admin_rules(), labels={AGGREGATE_TO.format("admin"): "true"}),
            _cluster_role("system:aggregate-to-edit", _edit_rules(), labels={AGGREGATE_TO.format("edit"): "true"}),
            _cluster_role("system:aggregate-to-view", _view_rules(), labels={AGGREGATE_TO.format("view"): "true"}),
            _cluster_role(
                "system:discovery",
                [_url_rule(["get"], ["/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*", "/version", "/version/", "/healthz", "/livez", "/readyz"])],
            ),
            _cluster_role(
                "system:basic-user",
                [
                    _rule(["create"], ["authorization.k8s.io"], ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]),
                    _rule(["create"], ["authentication.k8s.io"], ["selfsubjectreviews"]),
                ],
            ),
            _cluster_role("system:public-info-viewer", [_url_rule(["get"], ["/healthz", "/livez", "/readyz", "/version", "/version/"])]),
            _cluster_role("system:node-bootstrapper", [_rule(["create", *READ], [CERTIFICATES], ["certificatesigningrequests"])]),
            _cluster_role(NODE_CLIENT_ROLE, [_rule(["create"], [CERTIFICATES], ["certificatesigningrequests/nodeclient"])]),
            _cluster_role(SELF_NODE_CLIENT_ROLE, [_rule(["create"], [CERTIFICATES], ["certificatesigningrequests/selfnodeclient"])]),
        ]
    )


def cluster_role_bindings() -> list[dict[str, Any]]:
    """The default ClusterRoleBindings."""
    return [
        _cluster_binding("cluster-admin", "cluster-admin", [MASTERS]),
        _cluster_binding("system:discovery", "system:discovery", [AUTHENTICATED]),
        _cluster_binding("system:basic-user", "system:basic-user", [AUTHENTICATED]),
        _cluster_binding("system:public-info-viewer", "system:public-info-viewer", [AUTHENTICATED, UNAUTHENTICATED]),
        _cluster_binding("system:node-bootstrapper", "system:node-bootstrapper", [BOOTSTRAPPERS]),
        _cluster_binding("system:node-autoapprove-bootstrap", NODE_CLIENT_ROLE, [BOOTSTRAPPERS]),
        _cluster_binding("system:node-autoapprove-certificate-rotation", SELF_NODE_CLIENT_ROLE, [NODES]),
    ]
