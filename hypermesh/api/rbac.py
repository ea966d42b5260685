"""Role-based access control: may this identity do this verb to this resource?

The rules are Kubernetes' `rbac.authorization.k8s.io/v1`, so Roles and bindings written for a
Kubernetes cluster mean the same here:

- A Role (namespaced) or ClusterRole holds rules: `verbs`, `apiGroups`, `resources` (with
  `res/sub` for subresources, `*` for all, `*/sub` for one subresource of every resource),
  optional `resourceNames`, and, in ClusterRoles only, `nonResourceURLs` (`/healthz`, `/api/*`).
- A RoleBinding grants a Role or a ClusterRole inside its own namespace; a ClusterRoleBinding
  grants a ClusterRole everywhere, cluster-scoped kinds and non-resource URLs included.
- Subjects are Users, Groups and ServiceAccounts (`system:serviceaccount:NS:NAME`, in the
  groups `system:serviceaccounts` and `system:serviceaccounts:NS`).
- A ClusterRole with an `aggregationRule` holds the union of the rules of every ClusterRole its
  selectors match, which is how `admin`, `edit` and `view` grow when a CRD's author labels a
  ClusterRole `rbac.authorization.k8s.io/aggregate-to-view: "true"`. Kubernetes has a controller
  write the union into the object; here the index computes it, so it can never be stale.
- Everything is denied unless some rule allows it; there are no deny rules.

Speed is the design constraint: the check runs on every request. The index is rebuilt whole on
any change to a Role or binding (changes are rare; a rebuild of 1,000 bindings takes
milliseconds), and holds grants by subject, so a check looks only at the bindings that name the
caller or one of its groups, never at all of them. Answers are memoised per request shape until
the next rebuild.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hypermesh.api import selectors

# Subject kinds, as Kubernetes spells them.
USER = "User"
GROUP = "Group"
SERVICE_ACCOUNT = "ServiceAccount"
# Verbs Kubernetes checks; `*` in a rule means all of them (and any other a server adds).
RESOURCE_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
# Answers memoised between rebuilds; past this many the memo starts afresh.
MEMO_LIMIT = 1 << 16


@dataclass(frozen=True, slots=True)
class Attributes:
    """One request as the authoriser sees it (Kubernetes' authorizer.Attributes).

    A resource request names `resource` (plural, e.g. `instances`); a non-resource request
    (discovery, `/version`, `/openapi/v3`) names only `path`.
    """

    user: str
    groups: tuple[str, ...]
    verb: str
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""

    @property
    def resource_request(self) -> bool:
        return bool(self.resource)

    def describe(self) -> str:
        """The request in the words of a Kubernetes Forbidden message."""
        if not self.resource_request:
            return f'{self.verb} path "{self.path}"'
        target = self.resource + (f"/{self.subresource}" if self.subresource else "")
        where = f'in the namespace "{self.namespace}"' if self.namespace else "at the cluster scope"
        name = f' "{self.name}"' if self.name else ""
        return f'{self.verb} resource "{target}"{name} in API group "{self.api_group}" {where}'


@dataclass(frozen=True, slots=True)
class Decision:
    """An answer and why: which binding and role allowed it, or that nothing did."""

    allowed: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Rule:
    """One PolicyRule, with its lists as sets for O(1) membership."""

    verbs: frozenset[str]
    api_groups: frozenset[str] = frozenset()
    resources: frozenset[str] = frozenset()
    resource_names: frozenset[str] = frozenset()
    non_resource_urls: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        return cls(
            verbs=frozenset(data.get("verbs") or ()),
            api_groups=frozenset(data.get("apiGroups") or ()),
            resources=frozenset(data.get("resources") or ()),
            resource_names=frozenset(data.get("resourceNames") or ()),
            non_resource_urls=tuple(data.get("nonResourceURLs") or ()),
        )

    def allows(self, attrs: Attributes) -> bool:
        if "*" not in self.verbs and attrs.verb not in self.verbs:
            return False
        if not attrs.resource_request:
            return any(_url_matches(url, attrs.path) for url in self.non_resource_urls)
        if "*" not in self.api_groups and attrs.api_group not in self.api_groups:
            return False
        if not self._resource_matches(attrs):
            return False
        # resourceNames restricts to named objects: a list or a create (no name yet) never
        # matches such a rule, as in Kubernetes.
        return not self.resource_names or attrs.name in self.resource_names

    def _resource_matches(self, attrs: Attributes) -> bool:
        resources = self.resources
        if "*" in resources:
            return True
        if not attrs.subresource:
            return attrs.resource in resources
        return f"{attrs.resource}/{attrs.subresource}" in resources or f"*/{attrs.subresource}" in resources

    def _covers_resource(self, resource: str) -> bool:
        if "*" in self.resources or resource in self.resources:
            return True
        _, slash, sub = resource.partition("/")
        return bool(slash) and f"*/{sub}" in self.resources

    def covers(self, other: Rule) -> bool:
        """True when every request `other` allows is allowed by this rule too (the escalation
        check: a user may only grant what it holds)."""
        if "*" not in self.verbs and not other.verbs <= self.verbs:
            return False
        if other.non_resource_urls:
            return all(any(_url_matches(mine, url) for mine in self.non_resource_urls) for url in other.non_resource_urls)
        if "*" not in self.api_groups and not other.api_groups <= self.api_groups:
            return False
        if not all(self._covers_resource(resource) for resource in other.resources):
            return False
        return not self.resource_names or bool(other.resource_names) and other.resource_names <= self.resource_names


def _url_matches(rule_url: str, path: str) -> bool:
    if rule_url == "*" or rule_url == path:
        return True
    return rule_url.endswith("*") and path.startswith(rule_url[:-1])


@dataclass(frozen=True, slots=True)
class Grant:
    """A binding's promise to one subject: role `role_kind/role_name`, inside `namespace` (a
    RoleBinding) or everywhere (a ClusterRoleBinding, namespace None)."""

    namespace: str | None
    role_kind: str
    role_name: str
    binding: str

    def describe(self, subject: str) -> str:
        where = f'RoleBinding "{self.binding}" of {self.role_kind} "{self.role_name}" in "{self.namespace}"' if self.namespace is not None else f'ClusterRoleBinding "{self.binding}" of ClusterRole "{self.role_name}"'
        return f"allowed by {where} to {subject}"


@dataclass
class Policy:
    """The index of every Role and binding, built from their objects (see `build`)."""

    cluster_roles: dict[str, tuple[Rule, ...]] = field(default_factory=dict)
    roles: dict[tuple[str, str], tuple[Rule, ...]] = field(default_factory=dict)
    by_user: dict[str, list[Grant]] = field(default_factory=dict)
    by_group: dict[str, list[Grant]] = field(default_factory=dict)

    def rules_of(self, grant: Grant) -> tuple[Rule, ...]:
        if grant.role_kind == "ClusterRole":
            return self.cluster_roles.get(grant.role_name, ())
        if grant.namespace is None:
            return ()
        return self.roles.get((grant.namespace, grant.role_name), ())

    def grants_for(self, user: str, groups: Iterable[str]) -> Iterable[tuple[str, Grant]]:
        """Every grant that names this user or one of its groups, with the subject it named."""
        for grant in self.by_user.get(user, ()):
            yield f'User "{user}"', grant
        for group in groups:
            for grant in self.by_group.get(group, ()):
                yield f'Group "{group}"', grant


def build(
    cluster_roles: Iterable[Mapping[str, Any]],
    roles: Iterable[Mapping[str, Any]],
    cluster_bindings: Iterable[Mapping[str, Any]],
    bindings: Iterable[Mapping[str, Any]],
) -> Policy:
    """Index the four kinds' objects. Malformed entries (which validation should have kept
    out) grant nothing rather than failing the whole index."""
    policy = Policy()
    cluster_role_objects = {obj["metadata"]["name"]: obj for obj in cluster_roles}
    for name in cluster_role_objects:
        policy.cluster_roles[name] = _effective(name, cluster_role_objects, set())
    for obj in roles:
        meta = obj["metadata"]
        policy.roles[(meta.get("namespace") or "", meta["name"])] = _rules(obj)
    for obj in cluster_bindings:
        _index_binding(policy, obj, None)
    for obj in bindings:
        _index_binding(policy, obj, obj["metadata"].get("namespace") or "")
    return policy


def _rules(obj: Mapping[str, Any]) -> tuple[Rule, ...]:
    return tuple(Rule.from_dict(rule) for rule in obj.get("rules") or () if isinstance(rule, Mapping))


def _effective(name: str, everyone: Mapping[str, Mapping[str, Any]], seen: set[str]) -> tuple[Rule, ...]:
    """A ClusterRole's own rules plus, through its `aggregationRule`, the effective rules of
    every other ClusterRole a selector matches (so `admin` gets `edit`'s, which has `view`'s).
    A cycle of aggregations contributes each role once."""
    seen.add(name)
    obj = everyone[name]
    rules = list(_rules(obj))
    aggregation = obj.get("aggregationRule")
    if not isinstance(aggregation, Mapping):
        return tuple(rules)
    matchers = []
    for spec in aggregation.get("clusterRoleSelectors") or ():
        try:
            matcher = selectors.selector_from_spec(spec)
        except selectors.SelectorError:
            continue
        if not matcher.empty:
            matchers.append(matcher)
    for other_name, other in sorted(everyone.items()):
        labels = other["metadata"].get("labels") or {}
        if other_name not in seen and any(matcher.matches(labels) for matcher in matchers):
            rules.extend(_effective(other_name, everyone, seen))
    return tuple(rules)


def _index_binding(policy: Policy, obj: Mapping[str, Any], namespace: str | None) -> None:
    ref = obj.get("roleRef") or {}
    kind, role = ref.get("kind"), ref.get("name")
    if kind not in ("Role", "ClusterRole") or not role or (kind == "Role" and namespace is None):
        return
    grant = Grant(namespace, kind, role, obj["metadata"]["name"])
    for subject in obj.get("subjects") or ():
        if not isinstance(subject, Mapping):
            continue
        subject_kind, name = subject.get("kind"), subject.get("name")
        if not name:
            continue
        if subject_kind == USER:
            policy.by_user.setdefault(name, []).append(grant)
        elif subject_kind == GROUP:
            policy.by_group.setdefault(name, []).append(grant)
        elif subject_kind == SERVICE_ACCOUNT:
            account_ns = subject.get("namespace") or namespace or ""
            policy.by_user.setdefault(f"system:serviceaccount:{account_ns}:{name}", []).append(grant)


class Authorizer:
    """Answers RBAC questions from the current `Policy`; `replace` swaps in a new one."""

    def __init__(self, policy: Policy | None = None) -> None:
        self._policy = policy or Policy()
        self._memo: dict[Attributes, Decision] = {}

    @property
    def policy(self) -> Policy:
        return self._policy

    def replace(self, policy: Policy) -> None:
        self._policy = policy
        self._memo = {}

    def authorize(self, attrs: Attributes) -> Decision:
        """Allow if any rule of any role granted to the caller (or its groups) matches."""
        memo = self._memo
        found = memo.get(attrs)
        if found is not None:
            return found
        decision = self._decide(attrs)
        if len(memo) >= MEMO_LIMIT:
            memo.clear()
        memo[attrs] = decision
        return decision

    def _decide(self, attrs: Attributes) -> Decision:
        policy = self._policy
        for subject, grant in policy.grants_for(attrs.user, attrs.groups):
            # A RoleBinding reaches only requests inside its namespace.
            if grant.namespace is not None and grant.namespace != attrs.namespace:
                continue
            for rule in policy.rules_of(grant):
                if rule.allows(attrs):
                    return Decision(True, grant.describe(subject))
        return Decision(False, "no RBAC rule allows it")

    def rules_for(self, user: str, groups: tuple[str, ...], namespace: str) -> list[Rule]:
        """Every rule the caller holds in `namespace` (cluster-wide grants included): what
        `kubectl auth can-i --list` shows, and what the escalation check compares against."""
        policy = self._policy
        held: list[Rule] = []
        for _, grant in policy.grants_for(user, groups):
            if grant.namespace is None or grant.namespace == namespace:
                held.extend(policy.rules_of(grant))
        return held


def uncovered(wanted: Iterable[Rule], held: Iterable[Rule]) -> list[Rule]:
    """The parts of `wanted` that no rule of `held` covers (empty: granting them escalates
    nothing). Each wanted rule is cut into single verb/group/resource/name pieces first, as
    Kubernetes' escalation check does, so permissions held through several rules together
    still count."""
    held_list = list(held)
    return [atom for rule in wanted for atom in _atoms(rule) if not any(mine.covers(atom) for mine in held_list)]


def _atoms(rule: Rule) -> Iterable[Rule]:
    verbs = rule.verbs or frozenset({""})
    if rule.non_resource_urls:
        for verb in verbs:
            for url in rule.non_resource_urls:
                yield Rule(verbs=frozenset({verb}), non_resource_urls=(url,))
        return
    names: Iterable[str | None] = rule.resource_names or (None,)
    for verb in verbs:
        for group in rule.api_groups:
            for resource in rule.resources:
                for name in names:
                    yield Rule(
                        verbs=frozenset({verb}),
                        api_groups=frozenset({group}),
                        resources=frozenset({resource}),
                        resource_names=frozenset({name}) if name is not None else frozenset(),
                    )
