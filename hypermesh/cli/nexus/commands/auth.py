"""`nexus auth can-i VERB KIND[/NAME]` and `nexus auth whoami`: what the server thinks of you.

Both ask the server rather than reading the kubeconfig: `whoami` sends a SelfSubjectReview and
prints the user and groups the server took from the client certificate; `can-i` sends a
SelfSubjectAccessReview for one request (`yes`/`no`, exit code 0/1, as kubectl does) or, with
`--list`, a SelfSubjectRulesReview and prints every rule held in the namespace.

The dispatcher imports this module to build its sub-parsers, so only argparse and the standard
library are imported at the top.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypermesh.cli.nexus.session import Session

AUTHZ = "/apis/authorization.k8s.io/v1"
AUTHN = "/apis/authentication.k8s.io/v1"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """The `auth` command and its `can-i` and `whoami` sub-commands."""
    auth = sub.add_parser("auth", help="Inspect authorisation: can-i, whoami.", description="Inspect authorisation.", parents=[common])
    auth_sub = auth.add_subparsers(dest="auth_command", metavar="SUBCOMMAND", required=True)
    can_i = auth_sub.add_parser("can-i", help="check whether an action is allowed", parents=[common])
    can_i.add_argument("verb", metavar="VERB", nargs="?", help="get, list, watch, create, update, patch, delete, ... or *")
    can_i.add_argument("target", metavar="KIND[/NAME]", nargs="?", help="a kind (instances, workload, ...), KIND/NAME, or a URL path starting with /")
    can_i.add_argument("name", metavar="NAME", nargs="?", help="the object's name (or give KIND/NAME)")
    can_i.add_argument("-A", "--all-namespaces", action="store_true", help="ask about every namespace")
    can_i.add_argument("--subresource", default="", help="a subresource such as log, exec or status")
    can_i.add_argument("--list", action="store_true", help="list every rule held in the namespace")
    can_i.add_argument("-q", "--quiet", action="store_true", help="print nothing; the exit code answers")
    whoami = auth_sub.add_parser("whoami", help="print the user and groups the server sees", parents=[common])
    whoami.add_argument("-o", "--output", choices=("json", "yaml"))


def run(args: argparse.Namespace, session: Session) -> int:
    if args.auth_command == "whoami":
        return _whoami(args, session)
    return _can_i(args, session)


def _post(session: Session, path: str, body: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = session.client.request("POST", path, body=body).json()
    return answer


def _whoami(args: argparse.Namespace, session: Session) -> int:
    review = _post(session, f"{AUTHN}/selfsubjectreviews", {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    if args.output == "json":
        session.out(json.dumps(review, indent=2) + "\n")
        return 0
    if args.output == "yaml":
        from hypermesh.cli.nexus import yamlio

        session.out(yamlio.dump_yaml(review))
        return 0
    info = (review.get("status") or {}).get("userInfo") or {}
    rows = [("Username", info.get("username", "")), ("Groups", "[" + " ".join(info.get("groups") or []) + "]")]
    width = max(len(label) for label, _ in rows)
    session.out("ATTRIBUTE".ljust(width + 3) + "VALUE\n" + "".join(f"{label.ljust(width + 3)}{value}\n" for label, value in rows))
    return 0


def _can_i(args: argparse.Namespace, session: Session) -> int:
    from hypermesh.cli.nexus import errors

    if args.list:
        return _list_rules(args, session)
    if not args.verb or not args.target:
        raise errors.UsageError("usage: nexus auth can-i VERB KIND[/NAME] (or VERB /path), or nexus auth can-i --list")
    spec: dict[str, Any]
    if args.target.startswith("/"):
        spec = {"nonResourceAttributes": {"verb": args.verb, "path": args.target}}
    else:
        kind, _, name = args.target.partition("/")
        name = name or args.name or ""
        resource = session.resolve(kind)
        attrs: dict[str, Any] = {"verb": args.verb, "group": resource.group, "resource": resource.plural}
        if args.subresource:
            attrs["subresource"] = args.subresource
        if name:
            attrs["name"] = name
        if resource.namespaced and not args.all_namespaces:
            attrs["namespace"] = session.namespace
        spec = {"resourceAttributes": attrs}
    review = _post(session, f"{AUTHZ}/selfsubjectaccessreviews", {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": spec})
    allowed = bool((review.get("status") or {}).get("allowed"))
    if not args.quiet:
        session.out("yes\n" if allowed else "no\n")
    return 0 if allowed else 1


def _list_rules(args: argparse.Namespace, session: Session) -> int:
    review = _post(session, f"{AUTHZ}/selfsubjectrulesreviews", {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": session.namespace}})
    status = review.get("status") or {}
    rows = [("Resources", "Non-Resource URLs", "Resource Names", "Verbs")]
    for rule in status.get("resourceRules") or []:
        groups = rule.get("apiGroups") or [""]
        resources = [f"{res}.{group}" if group else res for group in groups for res in rule.get("resources") or []]
        rows.append((", ".join(resources), "[]", "[" + " ".join(rule.get("resourceNames") or []) + "]", "[" + " ".join(rule.get("verbs") or []) + "]"))
    for rule in status.get("nonResourceRules") or []:
        rows.append(("", "[" + " ".join(rule.get("nonResourceURLs") or []) + "]", "[]", "[" + " ".join(rule.get("verbs") or []) + "]"))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        session.out("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")
    return 0
