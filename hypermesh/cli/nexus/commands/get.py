"""`nexus get`: list or fetch objects, as a server-rendered table or in a machine format.

Human output asks the server for a Table, so printer columns come from the kind's definition;
json, yaml, name, jsonpath and custom-columns ask for plain objects. `-w` keeps going after the
listing with a watch from the listed resourceVersion, asking for Table rows, so every change
prints as one more aligned row.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from hypermesh.cli.nexus import errors, formats, manifests, tables
from hypermesh.cli.nexus.session import Session

if TYPE_CHECKING:
    from hypermesh.client import Resource


def split_kind_and_names(kind: str, names: list[str]) -> tuple[str, list[str]]:
    """`wl/web` and `wl web` both mean kind wl, name web."""
    if "/" in kind:
        kind, _, first = kind.partition("/")
        names = [first, *names]
    return kind, [n.rpartition("/")[2] for n in names]


def not_found_message(resource: Resource, name: str) -> str:
    """kubectl's NotFound line, for names a field-selected list did not return."""
    return f'Error from server (NotFound): {manifests.qualified(resource)} "{name}" not found'


def _with_type(resource: Resource, items: list[dict[str, Any]], *, managed_fields: bool = False) -> list[dict[str, Any]]:
    # Items of a List carry no kind or apiVersion; `-o name` and yaml need them. managedFields
    # are noise to a reader and hidden unless asked for, as kubectl does.
    for item in items:
        item.setdefault("apiVersion", resource.api_version)
        item.setdefault("kind", resource.kind)
        if not managed_fields:
            (item.get("metadata") or {}).pop("managedFields", None)
    return items


def _fetch_table(session: Session, args: argparse.Namespace, resource: Resource, ns: str | None, names: list[str]) -> tuple[dict[str, Any], list[str]]:
    """A Table of the requested objects and the NotFound lines for names that do not exist."""
    if not names:
        table = session.api.list(resource, ns, label_selector=args.selector, field_selector=args.field_selector, table=True)
        return table, []
    merged: dict[str, Any] | None = None
    missing: list[str] = []
    for name in names:
        selector = ",".join(s for s in (f"metadata.name={name}", args.field_selector) if s)
        table = session.api.list(resource, ns, label_selector=args.selector, field_selector=selector, table=True)
        if not table.get("rows"):
            if not args.ignore_not_found:
                missing.append(not_found_message(resource, name))
            continue
        if merged is None:
            merged = table
        else:
            merged["rows"].extend(table["rows"])
    return merged or {"columnDefinitions": [], "rows": [], "metadata": {}}, missing


def _fetch_objects(session: Session, args: argparse.Namespace, resource: Resource, ns: str | None, names: list[str]) -> tuple[list[dict[str, Any]], list[str], str]:
    """The requested objects, NotFound lines, and the list's resourceVersion for a watch."""
    if not names:
        listed = session.api.list(resource, ns, label_selector=args.selector, field_selector=args.field_selector)
        items = _with_type(resource, list(listed.get("items") or []), managed_fields=args.show_managed_fields)
        return items, [], str((listed.get("metadata") or {}).get("resourceVersion", ""))
    from hypermesh.client import ApiError

    objs: list[dict[str, Any]] = []
    missing: list[str] = []
    for name in names:
        try:
            objs.append(session.api.get(resource, name, ns))
        except ApiError as exc:
            if exc.status != 404:
                raise
            if not args.ignore_not_found:
                missing.append(errors.server_error_line(exc))
    # Watching one named object starts after the version just printed.
    version = str(objs[0].get("metadata", {}).get("resourceVersion", "")) if len(objs) == 1 else ""
    return _with_type(resource, objs, managed_fields=args.show_managed_fields), missing, version


def _several_kinds(session: Session, kind: str) -> list[Resource] | None:
    """The kinds of `wl,svc` or of a category (`all`, `hypermesh`); None for a single kind."""
    parts = [p for p in kind.split(",") if p]
    if len(parts) == 1 and "/" not in kind:
        categorised = [r for r in session.discovery.resources() if parts[0] in r.categories and "list" in r.verbs]
        if not categorised or any(parts[0] in (r.plural, r.singular, *r.short_names) for r in session.discovery.resources()):
            return None
        return categorised
    if len(parts) == 1:
        return None
    found: list[Resource] = []
    for part in parts:
        in_category = [r for r in session.discovery.resources() if part in r.categories and "list" in r.verbs]
        found.extend(in_category or [session.resolve(part)])
    return found


def _run_several(session: Session, args: argparse.Namespace, spec: formats.OutputSpec, resources: list[Resource]) -> int:
    """`get wl,svc` / `get all`: one table per kind with kind-qualified names, as kubectl prints."""
    if args.names or args.watch or args.watch_only:
        raise errors.UsageError("names and --watch need a single kind; drop them or name one kind")
    sections: list[str] = []
    objects: list[dict[str, Any]] = []
    namespace = None if args.all_namespaces else session.namespace
    for resource in resources:
        ns = namespace if resource.namespaced else None
        if spec.human:
            table = session.api.list(resource, ns, label_selector=args.selector, field_selector=args.field_selector, table=True)
            rows = table.get("rows") or []
            if not rows:
                continue
            for row in rows:
                row["cells"][0] = manifests.object_ref(resource, str(row["cells"][0]))
            options = tables.TableOptions(
                wide=spec.kind == "wide",
                no_headers=bool(args.no_headers),
                show_labels=bool(args.show_labels),
                show_namespace=bool(args.all_namespaces) and resource.namespaced,
                color=session.color,
            )
            sections.append(tables.TablePrinter(options).add(table))
        else:
            listed = session.api.list(resource, ns, label_selector=args.selector, field_selector=args.field_selector)
            objects.extend(_with_type(resource, list(listed.get("items") or []), managed_fields=args.show_managed_fields))
    if spec.human:
        if sections:
            session.out("\n".join(sections))
        else:
            session.err("No resources found" + (f" in {namespace} namespace." if namespace else ""))
    else:
        session.out(formats.render_objects(spec, objects, single=False, no_headers=bool(args.no_headers)))
    return 0


def run(args: argparse.Namespace, session: Session) -> int:
    """List, fetch, then optionally watch."""
    spec = formats.parse_output(args.output)
    several = _several_kinds(session, args.kind)
    if several is not None:
        return _run_several(session, args, spec, several)
    kind, names = split_kind_and_names(args.kind, list(args.names))
    resource = session.resolve(kind)
    all_namespaces = bool(args.all_namespaces) and resource.namespaced
    ns = None if all_namespaces or not resource.namespaced else session.namespace
    options = tables.TableOptions(
        wide=spec.kind == "wide",
        no_headers=bool(args.no_headers),
        show_labels=bool(args.show_labels),
        show_namespace=all_namespaces,
        color=session.color,
    )
    printer = tables.TablePrinter(options)
    missing: list[str] = []
    resource_version = ""
    if not args.watch_only:
        if spec.human:
            table, missing = _fetch_table(session, args, resource, ns, names)
            resource_version = str((table.get("metadata") or {}).get("resourceVersion", ""))
            text = printer.add(table)
            if text:
                session.out(text)
            elif not missing and not args.watch:
                session.err(_nothing_found(resource, ns))
        else:
            objs, missing, resource_version = _fetch_objects(session, args, resource, ns, names)
            if objs or not names:
                session.out(formats.render_objects(spec, objs, single=len(names) == 1, no_headers=bool(args.no_headers)))
        for line in missing:
            session.err(line)
    if args.watch or args.watch_only:
        if args.watch_only:
            # Changes only: start from the collection's current version.
            listed = session.api.list(resource, ns, label_selector=args.selector, field_selector=args.field_selector)
            resource_version = str((listed.get("metadata") or {}).get("resourceVersion", ""))
        if len(names) > 1:
            raise errors.CliError("watch is only supported on individual resources and resource collections, but multiple names were given")
        return _watch(session, args, resource, ns, names, spec, printer, resource_version)
    return 1 if missing else 0


def _nothing_found(resource: Resource, ns: str | None) -> str:
    if ns is not None and resource.namespaced:
        return f"No resources found in {ns} namespace."
    return "No resources found"


def _watch(
    session: Session,
    args: argparse.Namespace,
    resource: Resource,
    ns: str | None,
    names: list[str],
    spec: formats.OutputSpec,
    printer: tables.TablePrinter,
    resource_version: str,
) -> int:
    """Print one row (or one object) per watch event until interrupted.

    A watch the server ends (its timeout) is resumed from the last version seen; one whose
    version has been compacted away (410) is resumed from a fresh listing, whose rows are
    printed again so nothing that changed in the gap is missed.
    """
    field_selector = ",".join(s for s in ((f"metadata.name={names[0]}" if names else ""), args.field_selector) if s)
    while True:
        events = session.api.watch(
            resource,
            ns,
            resource_version=resource_version or None,
            label_selector=args.selector,
            field_selector=field_selector or None,
            table=spec.human,
        )
        expired = False
        received = 0
        for event in events:
            received += 1
            kind = event.get("type")
            obj = event.get("object") or {}
            version = str((obj.get("metadata") or {}).get("resourceVersion", ""))
            if kind == "BOOKMARK":
                resource_version = version or resource_version
                continue
            if kind == "ERROR":
                if obj.get("code") == 410:
                    expired = True
                    break
                raise errors.CliError(f"watch ended: {obj.get('message', obj)}")
            resource_version = version or resource_version
            if spec.human:
                session.out(printer.add(obj))
            else:
                _with_type(resource, [obj], managed_fields=args.show_managed_fields)
                session.out(formats.render_objects(spec, [obj], single=True, no_headers=True))
        if expired:
            if spec.human:
                table = session.api.list(resource, ns, label_selector=args.selector, field_selector=field_selector or None, table=True)
                session.out(printer.add(table))
            else:
                table = session.api.list(resource, ns, label_selector=args.selector, field_selector=field_selector or None)
            resource_version = str((table.get("metadata") or {}).get("resourceVersion", ""))
        elif not received:
            time.sleep(1.0)  # a stream that ended at once: do not spin
