"""`hypermesh user create`, `token`, `audit verify`: the administrator's security chores.

`user create NAME [--group G]...` issues a client certificate from the cluster CA (user NAME,
one organization per group, as Kubernetes reads certificates) and writes a kubeconfig for it,
pointing at the server the data dir's admin kubeconfig points at. The new user can do nothing
until a RoleBinding or ClusterRoleBinding names it or one of its groups, except find out so
(`nexus auth whoami`, `nexus auth can-i`).

`token create [--ttl 24h] [--description TEXT] [--group G]... --data-dir D` makes a bootstrap
token (a core v1 Secret in kube-system, see `hypermesh.pki.bootstraptoken`) through the API
server of D's admin kubeconfig, and prints it and the command that joins a node with it, CA hash
included; `token list` shows the tokens (ids only: a secret is shown once, when it is made) and
`token delete ID|TOKEN...` revokes them.

`audit verify FILE` checks an audit log's hash chain and names the first line that breaks it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from pathlib import Path
from typing import Any

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

    p = sub.add_parser("token", help="bootstrap tokens: how new nodes join (hypermesh agent --server --token --ca-hash)")
    token_sub = p.add_subparsers(dest="token_command", required=True)
    q = token_sub.add_parser("create", help="make a bootstrap token and print it with the join command")
    q.add_argument("--data-dir", required=True, type=Path, help="the server's data dir (its admin.kubeconfig reaches the server)")
    q.add_argument("--ttl", default="24h", help="how long the token can be used to join: 24h, 90m, 30s (0: forever; not advised)")
    q.add_argument("--description", default="", help="what the token is for, shown by `token list`")
    q.add_argument("--group", action="append", default=[], metavar="G", help="an extra group, system:bootstrappers:<name> (repeatable)")
    q = token_sub.add_parser("list", help="the bootstrap tokens, by id")
    q.add_argument("--data-dir", required=True, type=Path)
    q = token_sub.add_parser("delete", help="revoke bootstrap tokens (by id or whole token)")
    q.add_argument("tokens", nargs="+", metavar="ID|TOKEN")
    q.add_argument("--data-dir", required=True, type=Path)

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


def run_token(args: argparse.Namespace) -> int:
    """`hypermesh token create|list|delete`."""
    from hypermesh.client.config import ConfigError, load_config
    from hypermesh.client.errors import ClientError

    command = f"hypermesh token {args.token_command}"
    try:
        config = load_config(str(args.data_dir / "admin.kubeconfig"))
    except ConfigError as exc:
        print(f"{command}: cannot reach the cluster of {args.data_dir}: {exc}", file=sys.stderr)
        return 1
    try:
        if args.token_command == "create":
            return asyncio.run(_token_create(args, config, command))
        if args.token_command == "list":
            return asyncio.run(_token_list(config))
        return asyncio.run(_token_delete(args, config, command))
    except (ClientError, ValueError) as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 1


def _secrets() -> Any:
    from hypermesh.client.resources import Resource

    return Resource(group="", version="v1", kind="Secret", plural="secrets", singular="secret", namespaced=True)


async def _token_create(args: argparse.Namespace, config: Any, command: str) -> int:
    from cryptography import x509

    from hypermesh.client.aio import AsyncClient
    from hypermesh.client.errors import ApiError
    from hypermesh.pki import bootstraptoken, csr, renewal

    problems = []
    ttl: datetime.timedelta | None = None
    if args.ttl.strip() not in ("0", "0s"):
        try:
            ttl = renewal.parse_duration(args.ttl.strip())
        except ValueError as exc:
            problems.append(f"--ttl: {exc}")
    problems += [f"--group {g}: must match {bootstraptoken.EXTRA_GROUP.pattern}" for g in args.group if not bootstraptoken.EXTRA_GROUP.match(g)]
    if problems:
        for problem in problems:
            print(f"{command}: {problem}", file=sys.stderr)
        return 2
    ca_hash = csr.spki_hash(x509.load_pem_x509_certificate(config.ca_pem))
    expires = datetime.datetime.now(datetime.UTC) + ttl if ttl is not None else None
    client = AsyncClient.from_config(config)
    try:
        for _ in range(5):
            token = bootstraptoken.BootstrapToken.generate()
            manifest = bootstraptoken.secret_manifest(token, expires=expires, description=args.description, extra_groups=tuple(args.group))
            try:
                await client.create(_secrets(), manifest, field_manager="hypermesh-token")
            except ApiError as exc:
                if exc.reason == "AlreadyExists":
                    continue  # an id taken already: draw another
                raise
            break
        else:
            raise ValueError("five fresh token ids were all taken; try again")
    finally:
        await client.aclose()
    print(token)
    print(f"hypermesh agent --server {config.server} --token {token} --ca-hash {ca_hash}")
    until = f"until {bootstraptoken.format_time(expires)}" if expires else "forever (delete it with `hypermesh token delete` when done)"
    print(f"# the token joins nodes {until}", file=sys.stderr)
    return 0


async def _token_list(config: Any) -> int:
    from hypermesh.client.aio import AsyncClient
    from hypermesh.pki import bootstraptoken, renewal

    client = AsyncClient.from_config(config)
    try:
        found = await client.list(_secrets(), bootstraptoken.NAMESPACE, field_selector=f"type={bootstraptoken.SECRET_TYPE}")
    finally:
        await client.aclose()
    now = datetime.datetime.now(datetime.UTC)
    rows = [("TOKEN-ID", "TTL", "EXPIRES", "USAGES", "DESCRIPTION", "EXTRA GROUPS")]
    for secret in found.get("items") or []:
        stored = bootstraptoken.from_secret(secret)
        if stored is None:
            continue
        if stored.problem:
            ttl = "<invalid>"
        elif stored.expires is None:
            ttl = "<forever>"
        elif stored.expired(now):
            ttl = "<expired>"
        else:
            ttl = renewal.format_duration(datetime.timedelta(seconds=int((stored.expires - now).total_seconds())))
        expires = bootstraptoken.format_time(stored.expires) if stored.expires else "<never>"
        extra = ",".join(g for g in stored.groups if g != bootstraptoken.GROUP) or "<none>"
        rows.append((stored.id, ttl, expires, ",".join(stored.usages), stored.description or "<none>", extra))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return 0


async def _token_delete(args: argparse.Namespace, config: Any, command: str) -> int:
    from hypermesh.client.aio import AsyncClient
    from hypermesh.client.errors import ApiError
    from hypermesh.pki import bootstraptoken

    code = 0
    client = AsyncClient.from_config(config)
    try:
        for given in args.tokens:
            # The id is the part before the dot; a whole token may be given (it is never echoed).
            token_id = given.split(".", 1)[0]
            try:
                await client.delete(_secrets(), bootstraptoken.SECRET_PREFIX + token_id, bootstraptoken.NAMESPACE)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                print(f"{command}: no bootstrap token {token_id}", file=sys.stderr)
                code = 1
                continue
            print(f"bootstrap token {token_id} deleted")
    finally:
        await client.aclose()
    return code
