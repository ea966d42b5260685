"""`nexus rollout status|history|undo|restart KIND NAME`: kubectl's rollout verbs for Workloads.

Everything here reads and writes what the workloads controller keeps on the Workload itself:
`status` (replicas, updatedReplicas, availableReplicas, observedGeneration), the
`hypermesh.io/revision` annotation (the current revision number) and
`hypermesh.io/revision-history` (a JSON list of `{revision, templateHash, template}`). There is
no ReplicaSet kind to consult, so `undo` writes a remembered template back to `spec.template`
and the controller rolls it out as the newest revision, as `kubectl rollout undo` does.

`undo` and `restart` are merge patches of `spec.template` carrying the resourceVersion they were
computed from, so an edit made meanwhile fails the command (409) rather than being overwritten.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from hypermesh.cli.nexus import errors, manifests, yamlio
from hypermesh.cli.nexus.commands.get import split_kind_and_names
from hypermesh.cli.nexus.session import Session

if TYPE_CHECKING:
    from hypermesh.client import Resource

REVISION_ANNOTATION = "hypermesh.io/revision"
HISTORY_ANNOTATION = "hypermesh.io/revision-history"
RESTARTED_AT = "hypermesh.io/restartedAt"
# Where a change cause may be written on a template, ours first.
CHANGE_CAUSE_ANNOTATIONS = ("hypermesh.io/change-cause", "kubernetes.io/change-cause")
SUPPORTED_KINDS = ("Workload",)


def run(args: argparse.Namespace, session: Session) -> int:
    """Resolve KIND NAME, then run the subcommand."""
    kind, names = split_kind_and_names(args.kind, list(args.names))
    if len(names) != 1:
        raise errors.UsageError(f"rollout {args.rollout_command} needs exactly one NAME (KIND NAME or KIND/NAME)")
    resource = session.resolve(kind)
    if resource.kind not in SUPPORTED_KINDS:
        raise errors.CliError(f'no rollout support for kind "{resource.kind}" (supported: {", ".join(SUPPORTED_KINDS)})')
    ns = session.namespace if resource.namespaced else None
    name = names[0]
    handlers = {"status": _status, "history": _history, "undo": _undo, "restart": _restart}
    return handlers[args.rollout_command](args, session, resource, name, ns)


# status


def progress(obj: dict[str, Any]) -> tuple[str, bool]:
    """kubectl's rollout status message for a Workload, and whether the rollout is done; a
    rollout past its progress deadline is an error, as in kubectl."""
    name = obj["metadata"]["name"]
    generation = int(obj["metadata"].get("generation") or 0)
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if int(status.get("observedGeneration") or 0) < generation:
        return "Waiting for workload spec update to be observed...", False
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            raise errors.CliError(f'workload "{name}" exceeded its progress deadline')
    replicas = int(spec.get("replicas", 1))
    updated = int(status.get("updatedReplicas") or 0)
    current = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    prefix = f'Waiting for workload "{name}" rollout to finish: '
    if updated < replicas:
        return f"{prefix}{updated} out of {replicas} new replicas have been updated...", False
    if current > updated:
        return f"{prefix}{current - updated} old replicas are pending termination...", False
    if available < updated:
        return f"{prefix}{available} of {updated} updated replicas are available...", False
    return f'workload "{name}" successfully rolled out', True


def _status(args: argparse.Namespace, session: Session, resource: Resource, name: str, ns: str | None) -> int:
    """Print progress lines as the Workload changes until the rollout completes."""
    from hypermesh.client import ApiError

    # kubectl's --timeout=0 means "wait for ever".
    deadline = time.monotonic() + args.timeout if args.timeout else math.inf
    last = ""

    def show(obj: dict[str, Any]) -> bool:
        nonlocal last
        message, done = progress(obj)
        if message != last:
            session.out(message + "\n")
            last = message
        return done

    while True:
        obj = session.api.get(resource, name, ns)
        if show(obj) or not args.watch:
            return 0
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise errors.CliError("timed out waiting for the condition")
        # Watch from the version just read, narrowed to this object, for at most what is left.
        events = session.api.watch(
            resource, ns,
            resource_version=str(obj["metadata"].get("resourceVersion") or "") or None,
            field_selector=f"metadata.name={name}",
            timeout_seconds=max(1, math.ceil(min(remaining, 300))),
        )
        try:
            for event in events:
                kind = event.get("type")
                if kind == "BOOKMARK":
                    continue
                if kind == "ERROR":
                    break  # usually 410 Gone: read the object again and watch from there
                if kind == "DELETED":
                    raise ApiError(404, "NotFound", f'{manifests.qualified(resource)} "{name}" not found', {})
                current = event.get("object")
                if isinstance(current, dict) and show(current):
                    return 0
                if time.monotonic() >= deadline:
                    break
        finally:
            events.close()


# history


def revision_history(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The Workload's remembered revisions, oldest first (tolerant of a hand-edited value)."""
    text = (obj["metadata"].get("annotations") or {}).get(HISTORY_ANNOTATION)
    if not text:
        return []
    try:
        value = json.loads(text)
    except ValueError:
        raise errors.CliError(f"the {HISTORY_ANNOTATION} annotation is not valid JSON") from None
    if not isinstance(value, list):
        return []
    entries = [e for e in value if isinstance(e, dict) and isinstance(e.get("revision"), int) and isinstance(e.get("template"), dict)]
    return sorted(entries, key=lambda e: int(e["revision"]))


def change_cause(template: dict[str, Any]) -> str:
    """The template's change-cause annotation, or `<none>`."""
    annotations = (template.get("metadata") or {}).get("annotations") or {}
    for key in CHANGE_CAUSE_ANNOTATIONS:
        if annotations.get(key):
            return str(annotations[key])
    return "<none>"


def _find(history: list[dict[str, Any]], revision: int, resource: Resource, name: str) -> dict[str, Any]:
    for entry in history:
        if entry["revision"] == revision:
            return entry
    known = ", ".join(str(e["revision"]) for e in history) or "none"
    raise errors.CliError(f"unable to find the specified revision {revision} in the history of {manifests.object_ref(resource, name)} (known revisions: {known})")


def _history(args: argparse.Namespace, session: Session, resource: Resource, name: str, ns: str | None) -> int:
    """The revision table, or one revision's template with --revision N."""
    obj = session.api.get(resource, name, ns)
    history = revision_history(obj)
    ref = manifests.object_ref(resource, name)
    if args.revision:
        entry = _find(history, args.revision, resource, name)
        session.out(f"{ref} with revision #{entry['revision']}\nTemplate:\n")
        body = yamlio.dump_yaml(entry["template"])
        session.out("".join(f"  {line}\n" for line in body.splitlines()))
        return 0
    if not history:
        session.out(f"No rollout history found in {ref}\n")
        return 0
    session.out(f"{ref}\n")
    width = max(len("REVISION"), *(len(str(e["revision"])) for e in history))
    session.out(f"{'REVISION'.ljust(width)}  CHANGE-CAUSE\n")
    for entry in history:
        session.out(f"{str(entry['revision']).ljust(width)}  {change_cause(entry['template'])}\n")
    return 0


# undo


def merge_patch(current: Any, target: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns `current` into `target`: keys only in
    `current` become null, because a merge patch merges maps instead of replacing them."""
    if not isinstance(current, dict) or not isinstance(target, dict):
        return target
    patch: dict[str, Any] = {key: None for key in current if key not in target}
    for key, value in target.items():
        if key not in current:
            patch[key] = value
        elif current[key] != value:
            patch[key] = merge_patch(current[key], value)
    return patch


def _undo(args: argparse.Namespace, session: Session, resource: Resource, name: str, ns: str | None) -> int:
    """Write the previous (or --to-revision) template back to spec.template."""
    obj = session.api.get(resource, name, ns)
    history = revision_history(obj)
    ref = manifests.object_ref(resource, name)
    if not history:
        raise errors.CliError(f"no rollout history found for {ref}")
    current = int((obj["metadata"].get("annotations") or {}).get(REVISION_ANNOTATION) or history[-1]["revision"])
    if args.to_revision:
        entry = _find(history, args.to_revision, resource, name)
    else:
        earlier = [e for e in history if e["revision"] < current]
        if not earlier:
            raise errors.CliError(f"no revision to roll back to: {ref} has only revision {current} in its history")
        entry = earlier[-1]
    template = (obj.get("spec") or {}).get("template") or {}
    if entry["template"] == template:
        session.out(f"{ref} skipped rollback (current template already matches revision {entry['revision']})\n")
        return 0
    patch = {
        "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
        "spec": {"template": merge_patch(template, entry["template"])},
    }
    session.api.patch(resource, name, ns, patch)
    session.out(f"{ref} rolled back\n")
    return 0


# restart


def _restart(args: argparse.Namespace, session: Session, resource: Resource, name: str, ns: str | None) -> int:
    """Stamp the template with the time, so it hashes differently and rolls out afresh."""
    obj = session.api.get(resource, name, ns)
    ref = manifests.object_ref(resource, name)
    if (obj.get("spec") or {}).get("paused"):
        raise errors.CliError(f"can't restart paused {ref} (resume it first: set spec.paused to false)")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch = {
        "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
        "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}},
    }
    session.api.patch(resource, name, ns, patch)
    session.out(f"{ref} restarted\n")
    return 0
