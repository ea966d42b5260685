"""`nexus apply -f`: server-side apply of every object in the manifests, field manager `nexus`.

Each object gets one line, `workload.hypermesh.io/web created|configured|unchanged`: created
when the server answered 201, unchanged when the resourceVersion did not move (the server found
nothing to write), configured otherwise. A failing object does not stop the others; the command
exits 1 at the end. Conflicts name the manager that owns each field and suggest
`--force-conflicts`. `--prune -l SELECTOR` then deletes objects of the applied kinds that match
the selector, were applied by this field manager, and are no longer in the manifests.

`--watch` keeps going after the first apply: the files and directories given with `-f` are
watched (watchfiles, inotify underneath), and every change is applied again once the editor has
stopped writing (changes are gathered until 100 ms pass without one, at most 800 ms). Each round
prints the files that changed, then only the objects that were created, configured or pruned,
and errors; a file that does not parse is reported and skipped until it is fixed, the watch goes
on. With `--prune` and no selector, a round deletes what an earlier round of this watch applied
and the files no longer hold (if this field manager still applied it). Ctrl-C stops.
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


# A watched object: (group, kind, namespace, name).
ObjectKey = tuple[str, str, str | None, str]
# How watchfiles groups bursts of changes (milliseconds): quiet for STEP, or at most DEBOUNCE.
WATCH_STEP_MS = 100
WATCH_DEBOUNCE_MS = 800
# How often an idle watcher wakes up (it only checks for Ctrl-C then).
WATCH_IDLE_MS = 300


def run(args: argparse.Namespace, session: Session) -> int:
    """Apply every object, then prune if asked; with --watch, again on every change."""
    if getattr(args, "watch", False):
        return _watch(args, session)
    if args.prune and not args.selector:
        raise errors.UsageError("--prune needs -l SELECTOR to choose which objects it may delete")
    docs = manifests.read(list(args.filename), recursive=bool(args.recursive))
    failed, _ = _apply_docs(args, session, docs)
    return 1 if failed else 0


def _apply_docs(
    args: argparse.Namespace,
    session: Session,
    docs: list[Any],
    *,
    quiet_unchanged: bool = False,
    session_prune: dict[ObjectKey, Resource] | None = None,
) -> tuple[bool, dict[ObjectKey, Resource]]:
    """Apply `docs` and prune as asked; (whether anything failed, the objects applied)."""
    spec = formats.parse_output(args.output) if args.output else None
    dry_run = args.dry_run == "server"
    suffix = " (server dry run)" if dry_run else ""
    failed = False
    applied: set[ObjectKey] = set()
    resources: dict[ObjectKey, Resource] = {}
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
        resources[(resource.group, resource.kind, ns, name)] = resource
        scopes.setdefault((resource.group, resource.kind), (resource, set()))[1].add(ns)
        if spec is not None:
            result.setdefault("apiVersion", resource.api_version)
            result.setdefault("kind", resource.kind)
            session.out(formats.render_objects(spec, [result], single=True))
        else:
            said = outcome(live, result, status, dry_run=dry_run)
            if not (quiet_unchanged and said == "unchanged"):
                session.out(f"{manifests.object_ref(resource, name)} {said}{suffix}\n")
    if args.prune and args.selector:
        failed |= _prune(session, args, scopes, applied, dry_run=dry_run)
    elif args.prune and session_prune is not None and not failed:
        failed |= _prune_earlier(session, args, session_prune, resources)
    return failed, resources


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


def _prune_earlier(
    session: Session,
    args: argparse.Namespace,
    earlier: dict[ObjectKey, Resource],
    now: dict[ObjectKey, Resource],
) -> bool:
    """--watch --prune: delete what an earlier round applied and this one did not, if this
    field manager still applied it; True on failure."""
    from hypermesh.client import ApiError

    failed = False
    for key in sorted(set(earlier) - set(now), key=lambda k: (k[0], k[1], k[2] or "", k[3])):
        resource, (_, _, ns, name) = earlier[key], key
        try:
            live = session.api.get(resource, name, ns)
            if not _applied_by(live, args.field_manager):
                continue
            session.api.delete(resource, name, ns)
        except ApiError as exc:
            if exc.status == 404:
                continue
            session.err(errors.describe(exc)[0])
            failed = True
            continue
        session.out(f"{manifests.object_ref(resource, name)} pruned\n")
    return failed


# -- --watch -------------------------------------------------------------------------------------


def _watch(args: argparse.Namespace, session: Session) -> int:
    """Apply, then apply again on every change of the watched files until Ctrl-C."""
    from pathlib import Path

    import watchfiles

    if "-" in args.filename:
        raise errors.UsageError("--watch needs files or directories, not - (stdin)")
    if args.dry_run == "server":
        raise errors.UsageError("--watch cannot be combined with --dry-run")
    given = [Path(name).absolute() for name in args.filename]
    for path in given:
        if not path.exists():
            raise errors.CliError(f'the path "{path}" does not exist')
    recursive = bool(args.recursive)
    folders = [p for p in given if p.is_dir()]
    files = [p for p in given if not p.is_dir()]

    def relevant(_: object, changed: str) -> bool:
        path = Path(changed)
        if path in files:
            return True
        if path.suffix not in manifests.SUFFIXES:
            return False
        return any(path.parent == d or (recursive and d in path.parents) for d in folders)

    inventory: dict[ObjectKey, Resource] = {}

    def round_(first: bool) -> None:
        nonlocal inventory
        try:
            docs = _read_watched(given, recursive=recursive)
        except Exception as exc:  # noqa: BLE001 - a file being edited may not parse: say so, go on
            session.err(errors.describe(exc)[0])
            return
        failed, applied = _apply_docs(
            args, session, docs, quiet_unchanged=not first, session_prune=inventory
        )
        # After a failed round, what was not pruned yet stays remembered for the next one.
        inventory = applied if args.prune and not failed else {**inventory, **applied}

    # The watcher runs before the first apply, so an edit made meanwhile is not missed: its
    # first (empty) answer after a short timeout says it is watching.
    watched = sorted({*folders, *(f.parent for f in files)})
    changes_seen = watchfiles.watch(
        *watched,
        watch_filter=relevant,
        step=WATCH_STEP_MS,
        debounce=WATCH_DEBOUNCE_MS,
        recursive=recursive or bool(files),
        rust_timeout=WATCH_IDLE_MS,
        yield_on_timeout=True,
    )
    try:
        pending = next(changes_seen)
        round_(True)
        session.err(f"watching {', '.join(_shown(p) for p in given)} for changes (Ctrl-C to stop)")
        while True:
            if pending:
                names = sorted({_shown(Path(path)) for _, path in pending})
                session.out(f"changed: {', '.join(names)}\n")
                round_(False)
            pending = next(changes_seen)
    except KeyboardInterrupt:
        pass
    finally:
        changes_seen.close()
    return 0


def _read_watched(paths: list[Any], *, recursive: bool) -> list[Any]:
    """Like `manifests.read`, but an empty folder is no error: everything may have been
    removed, and --prune then removes it from the cluster too."""
    from hypermesh.cli.nexus import yamlio

    docs: list[Any] = []
    for path in paths:
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix in manifests.SUFFIXES)
        else:
            found = [path] if path.exists() else []
        for file in found:
            docs.extend(yamlio.load_documents(file.read_text(), _shown(file)))
    return docs


def _shown(path: Any) -> str:
    """A path as the user gave it: relative to the current directory when under it."""
    import os

    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)
