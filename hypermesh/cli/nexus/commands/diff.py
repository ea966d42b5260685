"""`nexus diff -f`: what applying the manifests would change, as a unified diff of YAML.

The "after" side is the server's own answer to a dry-run apply, so defaults, admission and
field ownership are exactly what a real apply would produce. managedFields are dropped from both
sides because they change on every apply and say nothing about the object. Like kubectl, the
exit code is 0 when nothing would change and 1 when something would.
"""

from __future__ import annotations

import argparse
import difflib
from typing import Any

from hypermesh.cli.nexus import manifests, yamlio
from hypermesh.cli.nexus.commands.apply import _live
from hypermesh.cli.nexus.session import Session


def _clean(obj: dict[str, Any] | None) -> str:
    if obj is None:
        return ""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return yamlio.dump_yaml({**obj, "metadata": meta})


def run(args: argparse.Namespace, session: Session) -> int:
    """Print one diff per object that would change."""
    changed = False
    for doc in manifests.read(list(args.filename), recursive=bool(args.recursive)):
        resource = manifests.resource_for(session, doc.obj)
        ns = session.namespace_for(resource, doc.obj)
        name = str(doc.obj["metadata"]["name"])
        live = _live(session, resource, name, ns)
        merged, _ = session.api.apply(resource, doc.obj, ns, force=bool(args.force_conflicts), dry_run=True)
        before, after = _clean(live), _clean(merged)
        if before == after:
            continue
        changed = True
        label = f"{resource.group or 'core'}.{resource.version}.{resource.kind}.{ns + '.' if ns else ''}{name}"
        diff = difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True), fromfile=f"live/{label}", tofile=f"merged/{label}"
        )
        session.out("".join(diff))
    return 1 if changed else 0
