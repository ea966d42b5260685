"""RBAC decisions: Kubernetes' matching rules, the default roles, aggregation, escalation."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hypermesh.api import rbac, rbacdefaults

RBAC_GROUP = "rbac.authorization.k8s.io"


def role(name: str, namespace: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "Role", "metadata": {"name": name, "namespace": namespace}, "rules": rules}


def cluster_role(name: str, rules: list[dict[str, Any]], labels: dict[str, str] | None = None, aggregate: dict[str, str] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {"kind": "ClusterRole", "metadata": {"name": name, "labels": labels or {}}, "rules": rules}
    if aggregate:
        obj["aggregationRule"] = {"clusterRoleSelectors": [{"matchLabels": aggregate}]}
    return obj


def binding(name: str, namespace: str | None, role_kind: str, role_name: str, subjects: list[tuple[str, str]]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {
        "metadata": meta,
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": role_kind, "name": role_name},
        "subjects": [{"kind": kind, "name": subject} for kind, subject in subjects],
    }


def authorizer(
    *,
    cluster_roles: list[dict[str, Any]] = (),  # type: ignore[assignment]
    roles: list[dict[str, Any]] = (),  # type: ignore[assignment]
    cluster_bindings: list[dict[str, Any]] = (),  # type: ignore[assignment]
    bindings: list[dict[str, Any]] = (),  # type: ignore[assignment]
    defaults: bool = True,
) -> rbac.Authorizer:
    all_cluster_roles = [*(rbacdefaults.cluster_roles() if defaults else []), *cluster_roles]
    all_cluster_bindings = [*(rbacdefaults.cluster_role_bindings() if defaults else []), *cluster_bindings]
    return rbac.Authorizer(rbac.build(all_cluster_roles, roles, all_cluster_bindings, bindings))


def ask(auth: rbac.Authorizer, user: str, verb: str, resource: str = "", *, groups: tuple[str, ...] = ("system:authenticated",), group: str = "hypermesh.io", sub: str = "", ns: str = "", name: str = "", path: str = "") -> bool:
    attrs = rbac.Attributes(user, groups, verb, group, resource, sub, ns, name, path)
    return auth.authorize(attrs).allowed


def test_masters_may_do_anything_and_a_new_user_nothing_but_discovery() -> None:
    auth = authorizer()
    masters = ("system:masters", "system:authenticated")
    assert ask(auth, "admin", "delete", "nodes", groups=masters, name="n1")
    assert ask(auth, "admin", "create", "secrets", groups=masters, group="", ns="kube-system")
    assert ask(auth, "admin", "get", path="/metrics", groups=masters)
    for verb in rbac.RESOURCE_VERBS:
        assert not ask(auth, "alice", verb, "workloads", ns="default")
    assert not ask(auth, "alice", "list", "namespaces", group="")
    assert ask(auth, "alice", "get", path="/apis/hypermesh.io/v1")
    assert ask(auth, "alice", "get", path="/version")
    assert not ask(auth, "alice", "post", path="/apis")
    assert ask(auth, "alice", "create", "selfsubjectaccessreviews", group="authorization.k8s.io")


def test_view_edit_admin_per_namespace() -> None:
    auth = authorizer(
        bindings=[
            binding("v", "team-a", "ClusterRole", "view", [("User", "viewer")]),
            binding("e", "team-a", "ClusterRole", "edit", [("User", "editor")]),
            binding("a", "team-a", "ClusterRole", "admin", [("Group", "team-a-admins")]),
        ]
    )
    # view: read, in its namespace only, never Secrets, logs yes, exec no.
    assert ask(auth, "viewer", "list", "instances", ns="team-a")
    assert ask(auth, "viewer", "watch", "workloads", ns="team-a")
    assert ask(auth, "viewer", "get", "instances", sub="log", ns="team-a", name="x")
    assert not ask(auth, "viewer", "list", "instances", ns="team-b")
    assert not ask(auth, "viewer", "list", "instances")  # all namespaces
    assert not ask(auth, "viewer", "get", "secrets", group="", ns="team-a", name="s")
    assert not ask(auth, "viewer", "create", "instances", sub="exec", ns="team-a", name="x")
    assert not ask(auth, "viewer", "delete", "workloads", ns="team-a", name="w")
    # edit: what view may, plus writes, Secrets and exec; not roles.
    assert ask(auth, "editor", "list", "instances", ns="team-a")
    assert ask(auth, "editor", "create", "workloads", ns="team-a")
    assert ask(auth, "editor", "get", "secrets", group="", ns="team-a", name="s")
    assert ask(auth, "editor", "create", "instances", sub="exec", ns="team-a", name="x")
    assert not ask(auth, "editor", "create", "rolebindings", group=RBAC_GROUP, ns="team-a")
    assert not ask(auth, "editor", "update", "instances", sub="status", ns="team-a", name="x")
    # admin: edit's, view's and roles.
    admins = ("team-a-admins", "system:authenticated")
    assert ask(auth, "carol", "create", "rolebindings", group=RBAC_GROUP, ns="team-a", groups=admins)
    assert ask(auth, "carol", "list", "instances", ns="team-a", groups=admins)
    assert ask(auth, "carol", "patch", "workloads", sub="scale", ns="team-a", name="w", groups=admins)
    assert not ask(auth, "carol", "list", "nodes", groups=admins)
    assert not ask(auth, "carol", "create", "rolebindings", group=RBAC_GROUP, ns="team-b", groups=admins)


def test_resource_names_subresources_and_urls() -> None:
    auth = authorizer(
        defaults=False,
        cluster_roles=[
            cluster_role("one-secret", [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["db"], "verbs": ["get", "update"]}]),
            cluster_role("scalers", [{"apiGroups": ["*"], "resources": ["*/scale"], "verbs": ["patch"]}]),
            cluster_role("metrics", [{"nonResourceURLs": ["/metrics", "/debug/*"], "verbs": ["get"]}]),
        ],
        cluster_bindings=[
            binding("b1", None, "ClusterRole", "one-secret", [("User", "u")]),
            binding("b2", None, "ClusterRole", "scalers", [("User", "u")]),
            binding("b3", None, "ClusterRole", "metrics", [("User", "u")]),
        ],
    )
    assert ask(auth, "u", "get", "secrets", group="", ns="x", name="db")
    assert not ask(auth, "u", "get", "secrets", group="", ns="x", name="other")
    assert not ask(auth, "u", "list", "secrets", group="", ns="x")
    assert not ask(auth, "u", "create", "secrets", group="", ns="x")
    assert ask(auth, "u", "patch", "workloads", sub="scale", ns="x", name="w")
    assert not ask(auth, "u", "patch", "workloads", ns="x", name="w")
    assert not ask(auth, "u", "patch", "workloads", sub="status", ns="x", name="w")
    assert ask(auth, "u", "get", path="/metrics")
    assert ask(auth, "u", "get", path="/debug/pprof/heap")
    assert not ask(auth, "u", "get", path="/metricsx")
    assert not ask(auth, "u", "get", path="/debug")


def test_a_rule_for_a_resource_does_not_reach_its_subresources() -> None:
    auth = authorizer(
        defaults=False,
        roles=[role("r", "ns", [{"apiGroups": ["hypermesh.io"], "resources": ["instances"], "verbs": ["*"]}])],
        bindings=[binding("b", "ns", "Role", "r", [("User", "u")])],
    )
    assert ask(auth, "u", "delete", "instances", ns="ns", name="x")
    assert not ask(auth, "u", "get", "instances", sub="log", ns="ns", name="x")
    assert not ask(auth, "u", "create", "instances", sub="exec", ns="ns", name="x")


def test_role_binding_to_a_role_of_another_namespace_grants_nothing() -> None:
    auth = authorizer(
        defaults=False,
        roles=[role("r", "a", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}])],
        bindings=[binding("b", "b", "Role", "r", [("User", "u")])],
    )
    assert not ask(auth, "u", "get", "instances", ns="a", name="x")
    assert not ask(auth, "u", "get", "instances", ns="b", name="x")


def test_service_accounts_and_groups() -> None:
    auth = authorizer(
        bindings=[
            {**binding("sa", "ci", "ClusterRole", "edit", []), "subjects": [{"kind": "ServiceAccount", "name": "deployer", "namespace": "ci"}]},
        ],
    )
    assert ask(auth, "system:serviceaccount:ci:deployer", "create", "workloads", ns="ci")
    assert not ask(auth, "system:serviceaccount:other:deployer", "create", "workloads", ns="ci")


def test_aggregation_extends_view_edit_and_admin() -> None:
    crd_viewer = cluster_role(
        "widgets-view",
        [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get", "list"]}],
        labels={"rbac.authorization.k8s.io/aggregate-to-view": "true"},
    )
    auth = authorizer(
        cluster_roles=[crd_viewer],
        bindings=[
            binding("v", "ns", "ClusterRole", "view", [("User", "v")]),
            binding("a", "ns", "ClusterRole", "admin", [("User", "a")]),
        ],
    )
    for user in ("v", "a"):
        assert ask(auth, user, "list", "widgets", group="example.com", ns="ns")
        assert not ask(auth, user, "delete", "widgets", group="example.com", ns="ns", name="w")


def test_aggregation_cycles_terminate() -> None:
    auth = authorizer(
        defaults=False,
        cluster_roles=[
            cluster_role("x", [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}], labels={"agg": "y"}, aggregate={"agg": "x"}),
            cluster_role("y", [{"apiGroups": [""], "resources": ["events"], "verbs": ["get"]}], labels={"agg": "x"}, aggregate={"agg": "y"}),
        ],
        cluster_bindings=[binding("b", None, "ClusterRoleBinding", "x", [])],
    )
    assert len(auth.policy.cluster_roles["x"]) == 2
    assert len(auth.policy.cluster_roles["y"]) == 2


def test_replacing_the_policy_forgets_memoised_answers() -> None:
    auth = authorizer(bindings=[binding("v", "ns", "ClusterRole", "view", [("User", "u")])])
    assert ask(auth, "u", "list", "instances", ns="ns")
    auth.replace(rbac.build(rbacdefaults.cluster_roles(), [], rbacdefaults.cluster_role_bindings(), []))
    assert not ask(auth, "u", "list", "instances", ns="ns")


def test_decisions_say_which_binding_allowed() -> None:
    auth = authorizer(bindings=[binding("viewers", "ns", "ClusterRole", "view", [("Group", "g")])])
    decision = auth.authorize(rbac.Attributes("u", ("g",), "list", "hypermesh.io", "instances", "", "ns"))
    assert decision.allowed
    assert 'RoleBinding "viewers"' in decision.reason and 'Group "g"' in decision.reason
    denied = rbac.Attributes("u", ("g",), "delete", "hypermesh.io", "instances", "", "ns", "x")
    assert 'delete resource "instances" "x" in API group "hypermesh.io" in the namespace "ns"' == denied.describe()


def test_escalation_check() -> None:
    auth = authorizer(
        bindings=[binding("e", "ns", "ClusterRole", "edit", [("User", "editor")])],
        roles=[
            role("split", "ns", [
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]},
            ])
        ],
    )
    held = auth.rules_for("editor", ("system:authenticated",), "ns")
    mine = [rbac.Rule.from_dict({"apiGroups": ["hypermesh.io"], "resources": ["workloads", "instances"], "verbs": ["get", "delete"]})]
    assert rbac.uncovered(mine, held) == []
    too_much = [rbac.Rule.from_dict({"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["create"]})]
    assert rbac.uncovered(too_much, held) == too_much
    assert rbac.uncovered([rbac.Rule.from_dict({"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]})], held)
    # Held through two rules together still counts as held.
    split = auth.policy.roles[("ns", "split")]
    assert rbac.uncovered([rbac.Rule.from_dict({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"]})], split) == []
    # Everything is covered by cluster-admin's rules.
    admin_rules = auth.policy.cluster_roles["cluster-admin"]
    assert rbac.uncovered(held, admin_rules) == []
    assert rbac.uncovered([rbac.Rule.from_dict({"nonResourceURLs": ["/x"], "verbs": ["get"]})], admin_rules) == []


# -- the index against a brute-force reading of the same objects ------------------------------

VERBS = ["get", "list", "create", "delete", "*"]
GROUPS = ["", "hypermesh.io", "*"]
RESOURCES = ["instances", "instances/log", "secrets", "*", "*/log"]
NAMES = ["a", "b"]
NAMESPACES = ["n1", "n2"]
USERS = ["u1", "u2"]
SUBJECT_GROUPS = ["g1", "g2"]

rules_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "verbs": st.lists(st.sampled_from(VERBS), min_size=1, max_size=2),
            "apiGroups": st.lists(st.sampled_from(GROUPS), min_size=1, max_size=2),
            "resources": st.lists(st.sampled_from(RESOURCES), min_size=1, max_size=2),
            "resourceNames": st.lists(st.sampled_from(NAMES), max_size=1),
        }
    ),
    max_size=3,
)
subjects_strategy = st.lists(
    st.one_of(st.tuples(st.just("User"), st.sampled_from(USERS)), st.tuples(st.just("Group"), st.sampled_from(SUBJECT_GROUPS))),
    max_size=2,
)


def _brute_force(roles: dict[tuple[str, str], list[dict[str, Any]]], bindings: list[tuple[str | None, str, str, list[tuple[str, str]]]], attrs: rbac.Attributes) -> bool:
    """Read every binding and rule, with Kubernetes' matching written out plainly."""
    for namespace, kind, role_name, subjects in bindings:
        if not any((k == "User" and n == attrs.user) or (k == "Group" and n in attrs.groups) for k, n in subjects):
            continue
        if namespace is not None and namespace != attrs.namespace:
            continue
        key = ("", role_name) if kind == "ClusterRole" else (namespace or "", role_name)
        for rule in roles.get(key, []):
            verb_ok = "*" in rule["verbs"] or attrs.verb in rule["verbs"]
            group_ok = "*" in rule["apiGroups"] or attrs.api_group in rule["apiGroups"]
            full = attrs.resource + ("/" + attrs.subresource if attrs.subresource else "")
            resource_ok = "*" in rule["resources"] or full in rule["resources"] or (attrs.subresource and "*/" + attrs.subresource in rule["resources"])
            names_ok = not rule["resourceNames"] or attrs.name in rule["resourceNames"]
            if verb_ok and group_ok and resource_ok and names_ok:
                return True
    return False


@settings(max_examples=200, deadline=None)
@given(
    cluster_rules=st.lists(rules_strategy, min_size=1, max_size=2),
    ns_rules=st.lists(rules_strategy, min_size=1, max_size=2),
    cluster_subjects=st.lists(subjects_strategy, max_size=2),
    ns_bindings=st.lists(st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(["Role", "ClusterRole"]), st.integers(0, 1), subjects_strategy), max_size=3),
    requests=st.lists(
        st.tuples(st.sampled_from(USERS), st.sampled_from(SUBJECT_GROUPS), st.sampled_from(VERBS[:-1]), st.sampled_from(GROUPS[:-1]), st.sampled_from(["instances", "secrets"]), st.sampled_from(["", "log"]), st.sampled_from(NAMESPACES), st.sampled_from(["", *NAMES])),
        min_size=1,
        max_size=10,
    ),
)
def test_index_agrees_with_reading_every_binding(cluster_rules: Any, ns_rules: Any, cluster_subjects: Any, ns_bindings: Any, requests: Any) -> None:
    roles: dict[tuple[str, str], list[dict[str, Any]]] = {}
    cluster_role_objs = []
    for index, rules in enumerate(cluster_rules):
        roles[("", f"c{index}")] = rules
        cluster_role_objs.append(cluster_role(f"c{index}", rules))
    role_objs = []
    for namespace in NAMESPACES:
        for index, rules in enumerate(ns_rules):
            roles[(namespace, f"r{index}")] = rules
            role_objs.append(role(f"r{index}", namespace, rules))
    flat: list[tuple[str | None, str, str, list[tuple[str, str]]]] = []
    cluster_binding_objs, binding_objs = [], []
    for index, subjects in enumerate(cluster_subjects):
        flat.append((None, "ClusterRole", f"c{index % len(cluster_rules)}", subjects))
        cluster_binding_objs.append(binding(f"cb{index}", None, "ClusterRole", f"c{index % len(cluster_rules)}", subjects))
    for index, (namespace, kind, which, subjects) in enumerate(ns_bindings):
        name = f"c{which % len(cluster_rules)}" if kind == "ClusterRole" else f"r{which % len(ns_rules)}"
        flat.append((namespace, kind, name, subjects))
        binding_objs.append(binding(f"b{index}", namespace, kind, name, subjects))
    auth = rbac.Authorizer(rbac.build(cluster_role_objs, role_objs, cluster_binding_objs, binding_objs))
    for user, group, verb, api_group, resource, sub, namespace, name in requests:
        attrs = rbac.Attributes(user, (group,), verb, api_group, resource, sub, namespace, name)
        assert auth.authorize(attrs).allowed == _brute_force(roles, flat, attrs), attrs
