"""`nexus delete`: by KIND NAME..., by `-l`/`--all`, or every object in `-f` manifests.

Prints kubectl's `workload.hypermesh.io "web" deleted` per object. `--cascade` maps to the
API's propagationPolicy (background, foreground, orphan); `--wait` then watches each object
until it is really gone (finalizers and foreground deletion can keep it around for a while).
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from hypermesh.cli.nexus import errors, manifests, waiting
from hypermesh.cli.nexus.commands.get import split_kind_and_names
from hypermesh.cli.nexus.session import Session

if TYPE_CHECKING:
    from hypermesh.client import Resource

Target = tuple["Resource", str, "str | None"]


def _targets(args: argparse.Namespace, session: Session) -> list[Target]:
    if args.filename:
        if args.kind:
            raise errors.UsageError("give either KIND NAME... or -f FILE, not both")
        out: list[Target] = []
        for doc in manifests.read(list(args.filename), recursive=bool(args.recursive)):
            resource = manifests.resource_for(session, doc.obj)
            out.append((resource, str(doc.obj["metadata"]["name"]), session.namespace_for(resource, doc.obj)))
        return out
    if not args.kind:
        raise errors.UsageError("delete needs KIND NAME..., KIND -l SELECTOR, KIND --all or -f FILE")
    kind, names = split_kind_and_names(args.kind, list(args.names))
    resource = session.resolve(kind)
    ns = session.namespace if resource.namespaced else None
    if args.selector or args.all:
        if names:
            raise errors.UsageError("names cannot be combined with -l or --all")
        listed = session.api.list(resource, ns, label_selector=args.selector)
        names = [str(item["metadata"]["name"]) for item in listed.get("items") or []]
        if not names:
            session.err(f"No resources found in {ns} namespace." if ns else "No resources found")
    elif not names:
        raise errors.UsageError(f'resource(s) were provided, but no name was specified for "{kind}"; use -l or --all to delete many')
    return [(resource, name, ns) for name in names]


def run(args: argparse.Namespace, session: Session) -> int:
    """Delete each target, then wait for them if asked."""
    from hypermesh.client import ApiError

    dry_run = args.dry_run == "server"
    propagation = args.cascade.capitalize()
    deleted: list[Target] = []
    failed = False
    for resource, name, ns in _targets(args, session):
        try:
            session.api.delete(resource, name, ns, propagation=propagation, dry_run=dry_run)
        except ApiError as exc:
            if exc.status == 404 and args.ignore_not_found:
                continue
            session.err(errors.describe(exc)[0])
            failed = True
            continue
        kind = resource.kind.lower()
        ref = f"{kind}.{resource.group}" if resource.group else kind
        session.out(f'{ref} "{name}" deleted{" (server dry run)" if dry_run else ""}\n')
        deleted.append((resource, name, ns))
    if args.wait and not dry_run:
        deadline = time.monotonic() + args.timeout
        gone, _ = waiting.parse_condition("delete")
        for resource, name, ns in deleted:
            waiting.wait_for(session, resource, name, ns, gone, timeout=max(0.0, deadline - time.monotonic()), missing_ok=True)
    return 1 if failed else 0
