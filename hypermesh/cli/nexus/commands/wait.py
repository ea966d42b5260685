"""`nexus wait KIND NAME --for=...`: block until a condition holds, the object is gone, or time runs out."""

from __future__ import annotations

import argparse
import time

from hypermesh.cli.nexus import errors, manifests, waiting
from hypermesh.cli.nexus.commands.get import split_kind_and_names
from hypermesh.cli.nexus.session import Session


def run(args: argparse.Namespace, session: Session) -> int:
    """Wait for each named (or selected) object in turn, sharing one deadline."""
    predicate, is_delete = waiting.parse_condition(args.condition)
    kind, names = split_kind_and_names(args.kind, list(args.names))
    resource = session.resolve(kind)
    ns = session.namespace if resource.namespaced else None
    if args.selector:
        listed = session.api.list(resource, ns, label_selector=args.selector)
        names.extend(str(item["metadata"]["name"]) for item in listed.get("items") or [])
        if not names:
            raise errors.CliError("no matching resources found")
    if not names:
        raise errors.UsageError("wait needs a NAME or -l SELECTOR")
    deadline = time.monotonic() + args.timeout
    for name in names:
        remaining = max(0.0, deadline - time.monotonic())
        waiting.wait_for(session, resource, name, ns, predicate, timeout=remaining, missing_ok=is_delete)
        session.out(f"{manifests.object_ref(resource, name)} condition met\n")
    return 0
