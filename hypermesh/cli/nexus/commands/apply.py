"""`nexus apply -f`: server-side apply of every object in the manifests, field manager `nexus`.

Each object gets one line, `workload.hypermesh.io/web created|configured|unchanged`: created
when the server answered 201, unchanged when the resourceVersion did not move (the server found
nothing to write), configured otherwise. A failing object does not stop the others; the command
exits 1 at the end. Conflicts name the manager that owns each field and suggest
`--force-conflicts`. `--prune -l SELECTOR` then deletes objects of the applied kinds that match
the selector, were applied by this field manager, and are no longer in the manifests.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from hypermesh.cli.nexus import errors, formats, manifests
from hypermesh.cli.nexus.session import Session

if TYPE_CHECKING:
    from hypermesh.client import Resource

# Metadata the server changes on every write; a dry run compares objects without it.
_VOLATILE = ("resourceVersion", "managedFields", "generation", "creationTimestamp", "uid")


def comparable(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    """`obj` without the bookkeeping fields that differ between two reads of the same state."""
    if obj is None:
        return None
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in _VOLATILE}
    return {**obj, "metadata": meta}


def _live(session: Session, resource: Resource, name: str, ns: str | None) -> dict[str, Any] | None:
    from hypermesh.client import ApiError

    try:
        return session.api.get(resource, name, ns)
    except ApiError as exc:
        if exc.status == 404:
            return None
        raise


def outcome(live: dict[str, Any] | None, result: dict[str, Any], status: int, *, dry_run: bool) -> str:
    """created, configured or unchanged, from the live object before and the apply's answer."""
    if live is None or status == 201:
        return "created"
    if dry_run:
        return "unchanged" if comparable(live) == comparable(result) else "configured"
    before = (live.get("metadata") or {}).get("resourceVersion")
    after = (result.get("metadata") or {}).get("resourceVersion")
    return "unchanged" if before == after else "configured"


def run(args: argparse.Namespace, session: Session) -> int:
    """Apply every object, then prune if asked."""
    if args.prune and not args.selector:
        raise errors.UsageError("--prune needs -l SELECTOR to choose which objects it may delete")
    spec = formats.parse_output(args.output) if args.output else None
    dry_run = args.dry_run == "server"
    suffix = " (server dry run)" if dry_run else ""
    docs = manifests.read(list(args.filename), recursive=bool(args.recursive))
    failed = False
    applied: set[tuple[str, str, str | None, str]] = set()
    scopes: dict[tuple[str, str], tuple[Resource, set[str | None]]] = {}
    for doc in docs:
        try:
            resource = manifests.resource_for(session, doc.obj)
            ns = session.namespace_for(resource, doc.obj)
            name = str(doc.obj["metadata"]["name"])
            live = _live(session, resource, name, ns)
            result, status = session.api.apply(
                resource, doc.obj, ns, field_manager=args.field_manager, force=bool(args.force_conflicts), dry_run=dry_run
            )
        except Exception as exc:  # noqa: BLE001 - report and carry on with the next object
            text, _ = errors.describe(exc)
            session.err(text)
            failed = True
            continue
        applied.add((resource.group, resource.kind, ns, name))
        scopes.setdefault((resource.group, resource.kind), (resource, set()))[1].add(ns)
        if spec is not None:
            result.setdefault("apiVersion", resource.api_version)
            result.setdefault("kind", resource.kind)
            session.out(formats.render_objects(spec, [result], single=True))
        else:
            session.out(f"{manifests.object_ref(resource, name)} {outcome(live, result, status, dry_run=dry_run)}{suffix}\n")
    if args.prune:
        failed |= _prune(session, args, scopes, applied, dry_run=dry_run)
    return 1 if failed else 0


def _applied_by(obj: dict[str, Any], manager: str) -> bool:
    fields = (obj.get("metadata") or {}).get("managedFields") or []
    return any(entry.get("manager") == manager and entry.get("operation") == "Apply" for entry in fields if isinstance(entry, dict))


def _prune(
    session: Session,
    args: argparse.Namespace,
    scopes: dict[tuple[str, str], tuple[Resource, set[str | None]]],
    applied: set[tuple[str, str, str | None, str]],
    *,
    dry_run: bool,
) -> bool:
    """Delete what this manager applied before but the manifests no longer hold; True on failure."""
    failed = False
    suffix = " (server dry run)" if dry_run else ""
    for (group, kind), (resource, namespaces) in sorted(scopes.items(), key=lambda item: item[0]):
        for ns in sorted(namespaces, key=lambda n: n or ""):
            listed = session.api.list(resource, ns, label_selector=args.selector)
            for obj in listed.get("items") or []:
                name = str(obj["metadata"]["name"])
                if (group, kind, ns, name) in applied or not _applied_by(obj, args.field_manager):
                    continue
                try:
                    session.api.delete(resource, name, ns, dry_run=dry_run)
                except Exception as exc:  # noqa: BLE001 - report and carry on
                    session.err(errors.describe(exc)[0])
                    failed = True
                    continue
                session.out(f"{manifests.object_ref(resource, name)} pruned{suffix}\n")
    return failed
