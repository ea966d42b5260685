"""What an RBAC check costs per request with 1,000 bindings (target: <= 20 us).

The policy: the default roles plus 1,000 RoleBindings over 100 namespaces (view, edit or admin
to one user or group each) and 50 custom Roles; requests come from 2,000 users asking for
varied verbs, kinds, namespaces and names. Two figures:

- `rbac_check_us`: a check whose answer is not memoised (every request a new shape), from the
  request's fields to the decision: building the Attributes and walking the caller's grants.
  This is the cost of the first request of each shape, the worst case.
- `rbac_check_memo_us`: the same requests asked again (answers memoised until the policy
  changes), what a steady stream of similar requests costs.

The limit beside them: building the Attributes and one dict lookup, the least any check keyed
by the request can cost in CPython on this machine.

Run: `.venv/bin/python bench/rbac_bench.py [--quick]`. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import code_version, limit, machine_info, measurement, now_iso  # noqa: E402

from hypermesh.api import authz, rbac, rbacdefaults  # noqa: E402
from hypermesh.resources.registry import builtin_types  # noqa: E402

TARGET_US = 20.0
BINDINGS = 1000
NAMESPACES = 100
USERS = 2000
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete")


def policy(rng: random.Random, bound: list[tuple[str, str]]) -> rbac.Policy:
    """The policy; `bound` receives (user, namespace) pairs that some binding names."""
    roles = []
    for index in range(50):
        ns = f"ns{index % NAMESPACES}"
        roles.append({"metadata": {"name": f"custom{index}", "namespace": ns}, "rules": [{"apiGroups": ["hypermesh.io"], "resources": ["workloads", "instances"], "verbs": ["get", "list"], "resourceNames": [f"w{index}"]}]})
    bindings = []
    for index in range(BINDINGS):
        ns = f"ns{index % NAMESPACES}"
        subject = {"kind": "User", "name": f"user{rng.randrange(USERS)}"} if index % 3 else {"kind": "Group", "name": f"team{index % 200}"}
        role = rng.choice(["view", "edit", "admin"])
        ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}
        if index < 50:
            ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"custom{index}"}
            ns = f"ns{index % NAMESPACES}"
        bindings.append({"metadata": {"name": f"b{index}", "namespace": ns}, "roleRef": ref, "subjects": [subject]})
        if subject["kind"] == "User":
            bound.append((subject["name"], ns))
    return rbac.build(rbacdefaults.cluster_roles(), roles, rbacdefaults.cluster_role_bindings(), bindings)


def requests(rng: random.Random, count: int, bound: list[tuple[str, str]]) -> list[tuple[Any, ...]]:
    """Half from users in a namespace where they are bound, half from anyone anywhere."""
    kinds = [t for t in builtin_types() if t.namespaced]
    out = []
    for index in range(count):
        rtype = rng.choice(kinds)
        named = rng.random() < 0.6
        user, ns = rng.choice(bound) if index % 2 else (f"user{rng.randrange(USERS)}", f"ns{rng.randrange(NAMESPACES)}")
        out.append((
            user,
            (f"team{rng.randrange(200)}", "system:authenticated"),
            rng.choice(["GET", "GET", "GET", "POST", "PATCH", "PUT", "DELETE"]),
            rtype,
            ns,
            f"w{index}" if named else None,
            rng.random() < 0.1,
        ))  # fmt: skip
    return out


def run(count: int) -> dict[str, Any]:
    rng = random.Random(7)
    bound: list[tuple[str, str]] = []
    auth = rbac.Authorizer(policy(rng, bound))
    asked = requests(rng, count, bound)

    def check_all() -> tuple[float, int]:
        allowed = 0
        began = time.perf_counter()
        for user, groups, method, rtype, ns, name, watch in asked:
            attrs = authz.resource_attributes(user, groups, method, rtype, namespace=ns, name=name, subresource=None, watch=watch)
            allowed += auth.authorize(attrs).allowed
        return (time.perf_counter() - began) / len(asked) * 1e6, allowed

    cold_us, allowed = check_all()
    memo_us, _ = check_all()
    memo: dict[rbac.Attributes, bool] = {}
    began = time.perf_counter()
    for user, groups, method, rtype, ns, name, watch in asked:
        attrs = authz.resource_attributes(user, groups, method, rtype, namespace=ns, name=name, subresource=None, watch=watch)
        memo.get(attrs)
    floor_us = (time.perf_counter() - began) / len(asked) * 1e6
    limits = {"attributes_and_lookup": limit(round(floor_us, 2), "us", "build the Attributes and one dict lookup")}
    details = {"bindings": BINDINGS, "namespaces": NAMESPACES, "requests": len(asked), "allowed_fraction": round(allowed / len(asked), 3)}
    return {
        "rbac_check": measurement(what="RBAC check per request, answer not memoised", figure=round(cold_us, 2), unit="us", target=TARGET_US, comparison="<=", limits=limits, details=details),
        "rbac_check_memo": measurement(what="RBAC check per request, answer memoised", figure=round(memo_us, 2), unit="us", target=TARGET_US, comparison="<=", limits=limits, details=details),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    args = parser.parse_args()
    report = {"benchmark": "rbac_bench", "started": now_iso(), "machine": machine_info(), "code": code_version()}
    report["measurements"] = run(20_000 if args.quick else 100_000)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
