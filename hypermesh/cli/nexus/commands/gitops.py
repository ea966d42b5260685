"""`nexus gitops sync|suspend|resume NAME`: drive GitSyncs by hand, as `flux reconcile|suspend|resume`.

- `sync` asks for a sync now, whatever the interval: it sets the annotation
  `hypermesh.io/sync-requested-at` to the current time (Flux's `reconcile.fluxcd.io/requestedAt`),
  which the controller reacts to at once, then waits until the status says that request was
  handled (`status.lastHandledSyncAt`) and prints the outcome: exit 0 when Ready, 1 with the
  reason otherwise. `--no-wait` returns after asking.
- `suspend` sets `spec.suspend`: no more syncs (nor pruning) until `resume`, which clears it and
  asks for a sync.

The dispatcher imports this module to build its sub-parsers, so only argparse and the standard
library are imported at the top.
"""

from __future__ import annotations

import argparse
import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypermesh.cli.nexus.session import Session

SYNC_REQUESTED_ANNOTATION = "hypermesh.io/sync-requested-at"


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    """The `gitops` command and its `sync`, `suspend` and `resume` sub-commands."""
    from hypermesh.cli.nexus.dispatch import parse_duration

    gitops = sub.add_parser("gitops", help="Drive GitSyncs: sync now, suspend, resume.", description="Drive GitSyncs: sync now, suspend, resume.", parents=[common])
    gitops_sub = gitops.add_subparsers(dest="gitops_command", metavar="SUBCOMMAND", required=True)
    sync = gitops_sub.add_parser("sync", help="sync a GitSync now and wait for the outcome", parents=[common])
    sync.add_argument("--no-wait", dest="wait", action="store_false", help="return once the sync is requested")
    sync.add_argument("--timeout", type=parse_duration, default=300.0, help="how long to wait for the outcome (default 5m)")
    gitops_sub.add_parser("suspend", help="stop syncing (and pruning) until resumed", parents=[common])
    resume = gitops_sub.add_parser("resume", help="sync again (at once, then every interval)", parents=[common])
    resume.add_argument("--no-wait", dest="wait", action="store_false", help="return once resumed")
    resume.add_argument("--timeout", type=parse_duration, default=300.0, help="how long to wait for the outcome (default 5m)")
    for parser in gitops_sub.choices.values():
        parser.add_argument("name", metavar="NAME", help="the GitSync (gitsync/NAME also works)")


def run(args: argparse.Namespace, session: Session) -> int:
    resource = session.resolve("gitsyncs")
    name = args.name.split("/", 1)[1] if args.name.lower().startswith(("gitsync/", "gitsyncs/", "gs/")) else args.name
    ns = session.namespace_for(resource)
    ref = f"gitsync.{resource.group}/{name}"
    if args.gitops_command == "suspend":
        session.api.patch(resource, name, ns, {"spec": {"suspend": True}})
        session.out(f"{ref} suspended\n")
        return 0
    patch: dict[str, Any] = {"metadata": {"annotations": {SYNC_REQUESTED_ANNOTATION: _now()}}}
    if args.gitops_command == "resume":
        patch["spec"] = {"suspend": False}
    else:
        current = session.api.get(resource, name, ns)
        if (current.get("spec") or {}).get("suspend"):
            from hypermesh.cli.nexus.errors import CliError

            raise CliError(f"{ref} is suspended: run `nexus gitops resume {name}` first")
    requested = patch["metadata"]["annotations"][SYNC_REQUESTED_ANNOTATION]
    session.api.patch(resource, name, ns, patch)
    if args.gitops_command == "resume":
        session.out(f"{ref} resumed\n")
    if not args.wait:
        if args.gitops_command == "sync":
            session.out(f"{ref} sync requested\n")
        return 0
    return _wait(session, resource, name, ns, requested, ref, args.timeout)


def _wait(session: Session, resource: Any, name: str, ns: str | None, requested: str, ref: str, timeout: float) -> int:
    from hypermesh.cli.nexus import waiting

    def handled(obj: dict[str, Any] | None) -> bool:
        status = (obj or {}).get("status") or {}
        return status.get("lastHandledSyncAt") == requested

    obj = waiting.wait_for(session, resource, name, ns, handled, timeout=timeout, missing_ok=False) or {}
    conditions: list[dict[str, Any]] = (obj.get("status") or {}).get("conditions") or []
    ready: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
    if ready.get("status") == "True":
        session.out(f"{ref} synced: {ready.get('message', '')}\n")
        return 0
    session.err(f"error: {ref} failed ({ready.get('reason', 'Unknown')}): {ready.get('message', '')}")
    return 1


def _now() -> str:
    """RFC 3339 with nanoseconds-style precision, as Flux writes requestedAt."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
