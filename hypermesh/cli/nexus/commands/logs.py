"""`nexus logs INSTANCE [-c CONTAINER] [-f] [-p] [--tail N]`: a container's output.

The lines come from the Instance's `log` subresource: the API server relays the request to the
agent of the Instance's node, which reads the files the container's stdout and stderr went to.
Those are two files without times, so a run's stdout comes first and its stderr after it;
while following (`-f`), new lines of both are printed as they arrive. A follow ends when the
container does, or with Ctrl-C.

The target is an Instance name, `instance/NAME`, or `workload/NAME` (or any kind that owns
Instances), which picks one of the Instances it owns as `kubectl logs deployment/x` picks a pod.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any, BinaryIO

from hypermesh.cli.nexus import errors
from hypermesh.cli.nexus.session import Session

if TYPE_CHECKING:
    from hypermesh.client import Resource


def run(args: argparse.Namespace, session: Session) -> int:
    """Print (or follow) the container's output."""
    from hypermesh.client.kinds import INSTANCES

    name = instance_name(session, args.target)
    tail = args.tail if args.tail is not None and args.tail >= 0 else None
    stream = session.api.logs(
        INSTANCES,
        name,
        session.namespace,
        container=args.container,
        follow=args.follow,
        previous=args.previous,
        tail_lines=tail,
        limit_bytes=args.limit_bytes,
    )
    out = _binary(session)
    try:
        for chunk in stream.chunks():
            if out is not None:
                out.write(chunk)
                out.flush()
            else:
                session.out(chunk.decode(errors="replace"))
    finally:
        stream.close()
    return 0


def instance_name(session: Session, target: str) -> str:
    """The Instance a command means: `NAME`, `instance/NAME`, or `KIND/NAME` of an owner."""
    if "/" not in target:
        return target
    kind, _, name = target.partition("/")
    if not name:
        raise errors.UsageError(f"{target!r}: expected KIND/NAME or an Instance name")
    resource = session.resolve(kind)
    if resource.kind == "Instance":
        return name
    owner = session.api.get(resource, name, session.namespace if resource.namespaced else None)
    return _owned_instance(session, resource, owner)


def _owned_instance(session: Session, resource: Resource, owner: dict[str, Any]) -> str:
    """One Instance `owner` owns: a running one if any, the oldest first (kubectl says which)."""
    from hypermesh.client.kinds import INSTANCES

    uid = owner["metadata"].get("uid")
    items = session.api.list(INSTANCES, session.namespace)["items"]
    owned = [
        item
        for item in items
        if any(ref.get("uid") == uid for ref in item["metadata"].get("ownerReferences") or [])
    ]
    if not owned:
        raise errors.CliError(f'{resource.kind.lower()}/{owner["metadata"]["name"]} has no Instances')
    owned.sort(
        key=lambda i: (
            (i.get("status") or {}).get("phase") != "Running",
            i["metadata"].get("creationTimestamp") or "",
            i["metadata"]["name"],
        )
    )
    chosen = str(owned[0]["metadata"]["name"])
    if len(owned) > 1:
        session.err(f"Found {len(owned)} instances, using instance/{chosen}")
    return chosen


def _binary(session: Session) -> BinaryIO | None:
    """Where raw bytes go: stdout's binary buffer (output need not be UTF-8), if it has one."""
    buffer: BinaryIO | None = getattr(session.stdout, "buffer", None)
    if buffer is not None:
        session.stdout.flush()
    return buffer
