"""`nexus describe KIND NAME`: one object in detail, for a person trying to understand it.

Shows identity and metadata, the spec and the rest of the status as indented YAML, the status
conditions as a table with ages, the owners (from ownerReferences) and the objects it owns
(same-namespace objects of the same API group whose ownerReferences name its uid), and last the
Events recorded about it (core v1 Events selected by involvedObject name, namespace and uid).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from hypermesh import ages
from hypermesh.cli.nexus import manifests, tables
from hypermesh.cli.nexus.commands.get import split_kind_and_names
from hypermesh.cli.nexus.session import Session

if TYPE_CHECKING:
    from hypermesh.client import Resource

LABEL_WIDTH = 14


def _field(label: str, value: str) -> str:
    return f"{label + ':':<{LABEL_WIDTH}}{value}"


def _mapping(label: str, values: dict[str, Any] | None) -> list[str]:
    if not values:
        return [_field(label, "<none>")]
    lines = []
    for i, key in enumerate(sorted(values)):
        text = f"{key}={values[key]}"
        lines.append(_field(label, text) if i == 0 else " " * LABEL_WIDTH + text)
    return lines


def _indented_yaml(value: Any) -> list[str]:
    from hypermesh.cli.nexus import yamlio

    return ["  " + line for line in yamlio.dump_yaml(value).rstrip("\n").splitlines()]


def _subtable(rows: list[list[str]], header: list[str]) -> list[str]:
    underline = ["-" * len(h) for h in header]
    text = tables.render_rows(header, [underline, *rows])
    return ["  " + line for line in text.rstrip("\n").splitlines()]


def render(obj: dict[str, Any], owned: list[str], events: list[dict[str, Any]] | None) -> str:
    """The describe text for `obj`, the references of objects it owns, and its events."""
    meta = obj.get("metadata") or {}
    lines = [_field("Name", str(meta.get("name", "")))]
    if meta.get("namespace"):
        lines.append(_field("Namespace", str(meta["namespace"])))
    lines += _mapping("Labels", meta.get("labels"))
    lines += _mapping("Annotations", {k: v for k, v in (meta.get("annotations") or {}).items() if k != "kubectl.kubernetes.io/last-applied-configuration"})
    lines.append(_field("API Version", str(obj.get("apiVersion", ""))))
    lines.append(_field("Kind", str(obj.get("kind", ""))))
    created = meta.get("creationTimestamp")
    lines.append(_field("Created", f"{created} ({ages.age(created)} ago)" if created else "<unknown>"))
    if meta.get("deletionTimestamp"):
        # With a grace period the timestamp is when it ends (as kubectl shows it for pods).
        grace = meta.get("deletionGracePeriodSeconds")
        when = f"grace period of {grace}s ends {meta['deletionTimestamp']}" if grace else f"since {meta['deletionTimestamp']}"
        lines.append(_field("Deleting", when))
    lines.append(_field("UID", str(meta.get("uid", ""))))
    lines.append(_field("Version", str(meta.get("resourceVersion", ""))))
    if meta.get("finalizers"):
        lines.append(_field("Finalizers", ", ".join(meta["finalizers"])))
    owners = meta.get("ownerReferences") or []
    if owners:
        lines.append("Owned By:")
        for ref in owners:
            controller = " (controller)" if ref.get("controller") else ""
            lines.append(f"  {ref.get('kind', '')}/{ref.get('name', '')}{controller}")
    if owned:
        lines.append("Owns:")
        lines += [f"  {ref}" for ref in owned]
    rest = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "spec", "status")}
    for key in ("spec", *sorted(rest)):
        if obj.get(key) not in (None, {}, []):
            lines.append(f"{key[0].upper()}{key[1:]}:")
            lines += _indented_yaml(obj[key])
    status = dict(obj.get("status") or {})
    conditions = status.pop("conditions", None) or []
    if status:
        lines.append("Status:")
        lines += _indented_yaml(status)
    if conditions:
        lines.append("Conditions:")
        rows = [
            [str(c.get("type", "")), str(c.get("status", "")), str(c.get("reason") or ""), ages.age(c.get("lastTransitionTime")), str(c.get("message") or "")]
            for c in conditions if isinstance(c, dict)
        ]
        lines += _subtable(rows, ["Type", "Status", "Reason", "Age", "Message"])
    if events is None:
        pass
    elif not events:
        lines.append(_field("Events", "<none>"))
    else:
        lines.append("Events:")
        rows = []
        for event in sorted(events, key=_event_time):
            count = int(event.get("count") or 1)
            when = ages.age(_event_time(event))
            if count > 1:
                when = f"{when} (x{count} over {ages.age(event.get('firstTimestamp') or event.get('eventTime'))})"
            source = (event.get("source") or {}).get("component") or event.get("reportingComponent") or ""
            rows.append([str(event.get("type", "")), str(event.get("reason", "")), when, str(source), str(event.get("message", "")).strip()])
        lines += _subtable(rows, ["Type", "Reason", "Age", "From", "Message"])
    return "\n".join(lines) + "\n"


def _event_time(event: dict[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp") or (event.get("metadata") or {}).get("creationTimestamp") or "")


def _events(session: Session, obj: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Core v1 Events about `obj`; None when the server has no events kind."""
    from hypermesh.client import ApiError, UnknownResource

    meta = obj.get("metadata") or {}
    try:
        events = next(r for r in session.discovery.resources() if r.group == "" and r.plural == "events")
    except StopIteration:
        return None
    selector = f"involvedObject.name={meta.get('name', '')},involvedObject.uid={meta.get('uid', '')}"
    ns = meta.get("namespace") or "default"
    if meta.get("namespace"):
        selector += f",involvedObject.namespace={ns}"
    try:
        listed = session.api.list(events, ns, field_selector=selector)
    except (ApiError, UnknownResource):
        return None
    return list(listed.get("items") or [])


def _owned(session: Session, resource: Resource, obj: dict[str, Any]) -> list[str]:
    """Objects in the same namespace and API group whose ownerReferences point at `obj`."""
    from hypermesh.client import ApiError

    meta = obj.get("metadata") or {}
    uid = meta.get("uid")
    if not uid or not resource.group:
        return []
    found: list[str] = []
    for candidate in session.discovery.resources():
        if candidate.group != resource.group or candidate.namespaced != resource.namespaced or "list" not in candidate.verbs:
            continue
        try:
            listed = session.api.list(candidate, meta.get("namespace"))
        except ApiError:
            continue
        for item in listed.get("items") or []:
            refs = (item.get("metadata") or {}).get("ownerReferences") or []
            if any(ref.get("uid") == uid for ref in refs):
                found.append(manifests.object_ref(candidate, str(item["metadata"]["name"])))
    return sorted(found)


def run(args: argparse.Namespace, session: Session) -> int:
    """Describe each named (or selected) object, separated by blank lines."""
    kind, names = split_kind_and_names(args.kind, list(args.names))
    resource = session.resolve(kind)
    ns = session.namespace if resource.namespaced else None
    objs: list[dict[str, Any]] = []
    if names:
        objs = [session.api.get(resource, name, ns) for name in names]
    else:
        listed = session.api.list(resource, ns, label_selector=args.selector)
        objs = list(listed.get("items") or [])
        if not objs:
            session.err(f"No resources found in {ns} namespace." if ns else "No resources found")
            return 0
    texts = []
    for obj in objs:
        obj.setdefault("apiVersion", resource.api_version)
        obj.setdefault("kind", resource.kind)
        texts.append(render(obj, _owned(session, resource, obj), _events(session, obj)))
    session.out("\n\n".join(texts))
    return 0
