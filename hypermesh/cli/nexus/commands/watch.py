"""`nexus watch KIND`: every change as one line, TYPE KIND NAME RESOURCEVERSION SUMMARY.

Where `get -w` shows the rows a person reads in a table, this shows the events themselves, which
is what someone debugging a controller wants: the event type, the version it produced, and a
short summary of the object's state (its Ready condition, its phase, or its generation).
"""

from __future__ import annotations

import argparse
from typing import Any

from hypermesh.cli.nexus import errors, tables
from hypermesh.cli.nexus.session import Session

COLUMNS = [{"name": name} for name in ("Type", "Kind", "Name", "Resource-Version", "Summary")]


def summary(obj: dict[str, Any]) -> str:
    """A few words about the object's state: conditions, phase, replicas or generation."""
    status = obj.get("status") or {}
    parts: list[str] = []
    if isinstance(status, dict):
        for cond in status.get("conditions") or []:
            if isinstance(cond, dict) and cond.get("type"):
                parts.append(f"{cond['type']}={cond.get('status', '')}")
        if status.get("phase"):
            parts.insert(0, f"phase={status['phase']}")
        if "readyReplicas" in status:
            parts.append(f"ready={status['readyReplicas']}")
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        parts.append("deleting")
    if not parts:
        parts.append(f"generation={meta.get('generation', 1)}")
    return " ".join(parts)


def event_row(event: dict[str, Any], kind: str, *, show_namespace: bool) -> list[str]:
    """The cells for one watch event."""
    obj = event.get("object") or {}
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    if show_namespace and meta.get("namespace"):
        name = f"{meta['namespace']}/{name}"
    return [str(event.get("type", "")), kind, name, str(meta.get("resourceVersion", "")), summary(obj)]


def run(args: argparse.Namespace, session: Session) -> int:
    """Stream events until interrupted or --timeout passes."""
    resource = session.resolve(args.kind)
    all_namespaces = bool(args.all_namespaces) and resource.namespaced
    ns = None if all_namespaces or not resource.namespaced else session.namespace
    printer = tables.TablePrinter(tables.TableOptions(color=session.color))
    # Reserve room for the longest event type, so the first ADDED rows do not set a width
    # that the next MODIFIED row breaks.
    printer.widths = tables.column_widths([["MODIFIED", resource.kind, "", "", ""]])
    events = session.api.watch(
        resource,
        ns,
        resource_version=args.resource_version,
        label_selector=args.selector,
        field_selector=args.field_selector,
        timeout_seconds=int(args.timeout) if args.timeout else None,
    )
    for event in events:
        if event.get("type") == "BOOKMARK":
            continue
        if event.get("type") == "ERROR":
            raise errors.CliError(f"watch ended: {(event.get('object') or {}).get('message', event)}")
        row = event_row(event, resource.kind, show_namespace=all_namespaces)
        session.out(printer.add({"columnDefinitions": COLUMNS, "rows": [{"cells": row}]}))
    return 0
