"""`hypermesh user create` and `hypermesh audit verify`: the administrator's security chores.

`user create NAME [--group G]...` issues a client certificate from the cluster CA (user NAME,
one organization per group, as Kubernetes reads certificates) and writes a kubeconfig for it,
pointing at the server the data dir's admin kubeconfig points at. The new user can do nothing
until a RoleBinding or ClusterRoleBinding names it or one of its groups, except find out so
(`nexus auth whoami`, `nexus auth can-i`).

`audit verify FILE` checks an audit log's hash chain and names the first line that breaks it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

RESERVED_GROUPS = ("system:masters", "system:nodes")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `user` and `audit` commands."""
    p = sub.add_parser("user", help="users: client certificates and kubeconfigs from the cluster CA")
    user_sub = p.add_subparsers(dest="user_command", required=True)
    q = user_sub.add_parser("create", help="issue a certificate for a user and write its kubeconfig")
    q.add_argument("name", metavar="NAME", help="the user name (the certificate's common name)")
    q.add_argument("--group", action="append", default=[], metavar="G", help="a group the user belongs to (repeatable)")
    q.add_argument("--data-dir", required=True, type=Path, help="the server's data dir (its pki/ signs)")
    q.add_argument("--output", type=Path, default=None, help="where to write the kubeconfig (default: ./NAME.kubeconfig)")
    q.add_argument("--days", type=int, default=365, help="how long the certificate is valid (default 365)")
    q.add_argument("--allow-reserved-groups", action="store_true", help=f"allow {', '.join(RESERVED_GROUPS)} (full or node powers) and system: user names")

    p = sub.add_parser("audit", help="the audit log")
    audit_sub = p.add_subparsers(dest="audit_command", required=True)
    q = audit_sub.add_parser("verify", help="check an audit log's hash chain")
    q.add_argument("file", type=Path)


def run_user(args: argparse.Namespace) -> int:
    from hypermesh.pki import CertificateAuthority
    from hypermesh.pki.kubeconfig import issue_user_kubeconfig

    name: str = args.name
    problems = []
    if not name:
        problems.append("user name: must not be empty")
    elif name.startswith("system:") and not args.allow_reserved_groups:
        problems.append(f"user name {name!r}: names starting with 'system:' belong to the cluster's own identities (nodes, controllers); pass --allow-reserved-groups if that is meant")
    for group in args.group:
        if not group:
            problems.append("--group: a group name cannot be empty")
        elif group in RESERVED_GROUPS and not args.allow_reserved_groups:
            problems.append(f"--group {group}: reserved ({'cluster-admin powers' if group == 'system:masters' else 'the node authoriser'}); pass --allow-reserved-groups if that is meant")
    if not 1 <= args.days <= 3650:
        problems.append(f"--days {args.days}: must be between 1 and 3650")
    if problems:
        for problem in problems:
            print(f"hypermesh user create: {problem}", file=sys.stderr)
        return 2
    pki_dir = args.data_dir / "pki"
    admin = args.data_dir / "admin.kubeconfig"
    try:
        server = _server_of(admin)
        ca = CertificateAuthority.load(pki_dir)
    except (OSError, ValueError, KeyError) as exc:
        print(f"hypermesh user create: cannot use the cluster in {args.data_dir}: {exc}", file=sys.stderr)
        return 1
    output = args.output or Path(f"{name}.kubeconfig")
    issue_user_kubeconfig(output, ca, server_url=server, user=name, groups=args.group, days=args.days)
    groups = f" in groups {', '.join(args.group)}" if args.group else ""
    print(f"wrote {output}: user {name}{groups}, valid {args.days} days; it can do nothing until bound (nexus auth can-i --list shows what it holds)")
    return 0


def _server_of(kubeconfig: Path) -> str:
    import yaml

    config = yaml.safe_load(kubeconfig.read_text())
    return str(config["clusters"][0]["cluster"]["server"])


def run_audit(args: argparse.Namespace) -> int:
    from hypermesh.api import audit

    try:
        lines, problem = audit.verify(args.file)
    except OSError as exc:
        print(f"hypermesh audit verify: {exc}", file=sys.stderr)
        return 1
    if problem is not None:
        print(f"{args.file}:{problem.line}: {problem.message}", file=sys.stderr)
        return 1
    print(f"{args.file}: {lines} lines, chain intact")
    return 0
