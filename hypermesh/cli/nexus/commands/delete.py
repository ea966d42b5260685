"""`nexus delete`: by KIND NAME..., by `-l`/`--all`, or every object in `-f` manifests.

Prints kubectl's `workload.hypermesh.io "web" deleted` per object. `--cascade` maps to the
API's propagationPolicy (background, foreground, orphan); `--wait` then watches each object
until it is really gone (finalizers, foreground deletion and a running Instance's grace period
can keep it around for a while).

Grace periods follow kubectl's rules exactly: `--grace-period N` is sent as DeleteOptions'
`gracePeriodSeconds` (a running Instance gets N seconds between SIGTERM and SIGKILL instead of
its `terminationGracePeriodSeconds`); `--now` is `--grace-period 1`; `--grace-period 0` alone
becomes 1, because 0 is the force path and only `--force` may take it; `--force` alone means 0.
A forced delete removes the Instance from the API at once, whatever its node is doing, which
kubectl warns about and so does this.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

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


# kubectl's words for a forced delete (staging/src/k8s.io/kubectl/pkg/cmd/delete/delete.go).
FORCE_WARNING = (
    "Warning: Immediate deletion does not wait for confirmation that the running resource has been "
    "terminated. The resource may continue to run on the cluster indefinitely."
)


def grace_period(*, grace: int, now: bool, force: bool) -> int | None:
    """The gracePeriodSeconds to send (None: the object's own), by kubectl's rules."""
    if now:
        if grace != -1:
            raise errors.UsageError("--now and --grace-period cannot be specified together")
        grace = 1
    if grace == 0 and not force:
        # kubectl keeps a bare --grace-period=0 from being a force delete by accident.
        grace = 1
    if force and grace < 0:
        grace = 0
    return grace if grace >= 0 else None


def delete_object(
    session: Session,
    resource: Resource,
    name: str,
    namespace: str | None,
    *,
    propagation: str | None = None,
    grace: int | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """DELETE one object with DeleteOptions; the client's `delete` has no grace period, so
    the body is built here when one is given."""
    if grace is None:
        return session.api.delete(resource, name, namespace, propagation=propagation, dry_run=dry_run)
    options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": grace}
    if propagation is not None:
        options["propagationPolicy"] = propagation
    query = [("dryRun", "All")] if dry_run else []
    answer = session.client.request("DELETE", resource.path(namespace, name), query=query, body=options).json()
    return answer if isinstance(answer, dict) else {}


def run(args: argparse.Namespace, session: Session) -> int:
    """Delete each target, then wait for them if asked."""
    from hypermesh.client import ApiError

    dry_run = args.dry_run == "server"
    propagation = args.cascade.capitalize()
    grace = grace_period(grace=args.grace_period, now=args.now, force=args.force)
    forced = args.force and grace == 0
    if forced:
        session.err(FORCE_WARNING)
    deleted: list[Target] = []
    failed = False
    for resource, name, ns in _targets(args, session):
        try:
            delete_object(session, resource, name, ns, propagation=propagation, grace=grace, dry_run=dry_run)
        except ApiError as exc:
            if exc.status == 404 and args.ignore_not_found:
                continue
            session.err(errors.describe(exc)[0])
            failed = True
            continue
        kind = resource.kind.lower()
        ref = f"{kind}.{resource.group}" if resource.group else kind
        verb = "force deleted" if forced else "deleted"
        session.out(f'{ref} "{name}" {verb}{" (server dry run)" if dry_run else ""}\n')
        deleted.append((resource, name, ns))
    if args.wait and not dry_run:
        deadline = time.monotonic() + args.timeout
        gone, _ = waiting.parse_condition("delete")
        for resource, name, ns in deleted:
            waiting.wait_for(session, resource, name, ns, gone, timeout=max(0.0, deadline - time.monotonic()), missing_ok=True)
    return 1 if failed else 0
