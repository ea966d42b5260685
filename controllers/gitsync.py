"""The GitSync controller: keeps a path of a git repository applied, as Flux's Kustomization.

Each reconcile of a GitSync is one sync, and it runs again every `spec.interval`:

1. nothing while `spec.suspend` is set; Ready=False/DependencyNotReady while a GitSync named in
   `dependsOn` is not Ready (a dependency turning Ready wakes its dependents at once);
2. fetch `spec.ref` of `spec.url` into the GitSync's cache (`<data dir>/<namespace>/<name>`),
   with the credentials of `spec.secretRef`, and read the manifests under `spec.path`
   (`hypermesh.gitops.source`); a failure is Ready=False/GitOperationFailed with git's words;
3. parse them; a revision that does not parse, or that the server refuses in the dry run,
   stops there: Ready=False/ValidationFailed and Stalled=True with `file:line: field:
   problem`, `lastAttemptedRevision` set, and the last good revision stays applied;
4. apply, wait and prune (`hypermesh.gitops.sync`); report `lastAppliedRevision`, the
   inventory, per-object errors and Events: `Synced` listing what changed, `DriftCorrected`
   naming the fields someone changed by hand, and a Warning for each new failure.

`nexus gitops sync NAME` sets the annotation `hypermesh.io/sync-requested-at` (Flux's
`reconcile.fluxcd.io/requestedAt`); a change of it queues the GitSync at once, and the status
echoes the value handled in `lastHandledSyncAt`. Only spec, that annotation and deletion queue a
GitSync: its own status writes do not, or every sync would start the next.

Deleting a GitSync with `prune: true` (and not suspended) deletes what it applied, behind the
finalizer `hypermesh.io/gitsync`, then its cache.

A GitSync applies with this controller's rights, into any namespace its manifests name: letting
someone create GitSyncs is letting them create anything. The field manager is
`gitsync/<name>` (as the issue asks) and ownership is told by the labels
`gitsync.hypermesh.io/name` and `/namespace`, so two GitSyncs of one name in two namespaces
never prune each other's objects.
"""

from __future__ import annotations

import datetime
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypermesh.client.errors import ApiError, ClientError
from hypermesh.client.resources import Resource
from hypermesh.gitops import credentials, git, manifests, source
from hypermesh.gitops.inventory import InventoryItem, Outcome, Owner
from hypermesh.gitops.kinds import Kinds
from hypermesh.gitops.sync import Options, Syncer
from hypermesh.operator import Context, Operator, Result
from hypermesh.operator.conditions import (
    ConditionStatus,
    get_condition,
    set_condition,
    status_changes,
)
from hypermesh.operator.informer import object_key

log = logging.getLogger(__name__)

GITSYNCS = Resource(
    group="hypermesh.io",
    version="v1",
    kind="GitSync",
    plural="gitsyncs",
    singular="gitsync",
    namespaced=True,
    short_names=("gs",),
    subresources=("status",),
)
SECRETS = Resource(
    group="", version="v1", kind="Secret", plural="secrets", singular="secret", namespaced=True
)
SYNC_REQUESTED_ANNOTATION = "hypermesh.io/sync-requested-at"
FINALIZER = "hypermesh.io/gitsync"
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# How many changes one Synced Event lists.
_LISTED_CHANGES = 20

Condition = tuple[ConditionStatus, str, str]


@dataclass(frozen=True)
class GitSyncSettings:
    """Where the controller keeps its git caches and how it runs git."""

    # None: a fresh temporary directory (the caches are only caches).
    data_dir: Path | None = None
    git: str = "git"
    ssh: str = "ssh"
    # Local paths and file:// urls read the controller's own disk: turn off where GitSyncs
    # come from people who should not.
    allow_local: bool = True
    # An unset spec.timeout is the interval, but at least this.
    min_timeout: float = 30.0
    # How soon a GitSync waiting for a dependency looks again (besides being woken by it).
    dependency_retry: float = 10.0
    health_poll: float = 0.5


@dataclass(frozen=True)
class _Spec:
    url: str
    transport: str
    ref: git.Ref
    path: str
    interval: float
    timeout: float


class GitSyncController:
    """The reconcile of GitSyncs over their informer."""

    def __init__(self, op: Operator, settings: GitSyncSettings) -> None:
        self.op = op
        self.settings = settings
        self.data_dir = settings.data_dir or Path(tempfile.mkdtemp(prefix="hypermesh-gitops-"))
        self.gitsyncs = op.informer(GITSYNCS)
        self.kinds = Kinds(op.client)
        # What last queued each GitSync (generation, sync request, deletion).
        self._marks: dict[str, tuple[Any, ...]] = {}
        # Each GitSync's readiness as its dependents last saw it.
        self._readiness: dict[str, tuple[Any, ...]] = {}
        # Status written here and not yet in the cache (the cache lags our writes).
        self._written: dict[str, dict[str, Any]] = {}
        # key -> (revision, path, manifests): parsing is skipped while the revision stays.
        self._parsed: dict[str, tuple[str, str, list[manifests.Manifest]]] = {}
        op.reconcile(GITSYNCS, events=self._wanted)(self.reconcile)
        self.controller = op.controllers[-1]
        op.on_delete(GITSYNCS, finalizer=FINALIZER)(self.finalize)
        self.gitsyncs.subscribe(self._wake_dependents)

    # Informer events

    def _wanted(self, event: str, obj: dict[str, Any]) -> bool:
        key = object_key(obj)
        if event == "DELETED":
            self._marks.pop(key, None)
            return False
        meta = obj.get("metadata") or {}
        mark = (
            meta.get("generation"),
            (meta.get("annotations") or {}).get(SYNC_REQUESTED_ANNOTATION),
            bool(meta.get("deletionTimestamp")),
        )
        before = self._marks.get(key)
        self._marks[key] = mark
        return before != mark

    def _wake_dependents(self, event: str, obj: dict[str, Any]) -> None:
        key = object_key(obj)
        ready = get_condition(obj, "Ready") or {}
        meta = obj.get("metadata") or {}
        mark = (
            event == "DELETED",
            ready.get("status"),
            (obj.get("status") or {}).get("observedGeneration") == meta.get("generation"),
        )
        if self._readiness.get(key) == mark:
            return
        self._readiness[key] = mark
        queue = self.controller.queue
        if queue is None:
            return
        for other in self.gitsyncs.list():
            other_ns = other["metadata"].get("namespace")
            for dep in (other.get("spec") or {}).get("dependsOn") or []:
                if f"{dep.get('namespace') or other_ns}/{dep.get('name')}" == key:
                    queue.add(object_key(other))

    # The reconcile

    async def reconcile(self, obj: dict[str, Any], ctx: Context) -> Result | None:
        """One sync of one GitSync."""
        obj = self._fresh(obj)
        spec = obj.get("spec") or {}
        if spec.get("suspend"):
            return None
        try:
            parsed = _parse_spec(spec, allow_local=self.settings.allow_local, minimum=self.settings.min_timeout)
        except ValueError as exc:
            await self._report(obj, ctx, ready=("False", "InvalidSpec", str(exc)), stalled=True)
            return None
        blocked = self._blocking_dependency(obj)
        if blocked is not None:
            await self._report(obj, ctx, ready=("False", "DependencyNotReady", blocked))
            return Result.requeue_after(min(self.settings.dependency_retry, parsed.interval))
        snapshot = await self._fetch(obj, ctx, parsed)
        if snapshot is None:
            return Result.requeue_after(parsed.interval)
        status = obj.get("status") or {}
        try:
            found = self._parse(obj, snapshot, parsed.path)
        except manifests.InvalidSource as exc:
            await self._report(
                obj, ctx, ready=("False", "ValidationFailed", f"revision {snapshot.revision}: {exc}"),
                stalled=True, fields={"lastAttemptedRevision": snapshot.revision},
            )  # fmt: skip
            return Result.requeue_after(parsed.interval)
        generation = obj["metadata"].get("generation")
        fresh = (
            status.get("lastAppliedRevision") != snapshot.revision
            or status.get("observedGeneration") != generation
        )
        if fresh:
            obj = await self._report(
                obj, ctx, ready=None, reconciling=("True", "Progressing", f"Applying revision {snapshot.revision}"),
                fields={"lastAttemptedRevision": snapshot.revision}, final=False,
            )  # fmt: skip
        outcome = await self._syncer(obj, spec, parsed).run(found)
        await self._finish(obj, ctx, snapshot.revision, outcome, fresh=fresh)
        return Result.requeue_after(parsed.interval)

    def _syncer(self, obj: dict[str, Any], spec: dict[str, Any], parsed: _Spec) -> Syncer:
        meta = obj["metadata"]
        namespace = str(meta.get("namespace") or "default")
        checks = tuple(
            (str(c.get("apiVersion") or ""), str(c["kind"]), c.get("namespace"), str(c["name"]))
            for c in spec.get("healthChecks") or []
        )
        options = Options(
            owner=Owner(namespace, str(meta["name"])),
            default_namespace=spec.get("targetNamespace") or namespace,
            prune=bool(spec.get("prune", True)),
            wait=bool(spec.get("wait", False)),
            timeout=parsed.timeout,
            health_checks=checks,
            poll=self.settings.health_poll,
        )
        return Syncer(self.op.client, self.kinds, options, previous=_inventory(obj))

    def _blocking_dependency(self, obj: dict[str, Any]) -> str | None:
        namespace = obj["metadata"].get("namespace")
        for dep in (obj.get("spec") or {}).get("dependsOn") or []:
            dep_ns = dep.get("namespace") or namespace
            other = self.gitsyncs.get(str(dep.get("name")), dep_ns)
            name = f"{dep_ns}/{dep.get('name')}"
            if other is None:
                return f"dependency GitSync {name} does not exist"
            ready = get_condition(other, "Ready") or {}
            observed = (other.get("status") or {}).get("observedGeneration")
            if ready.get("status") != "True" or observed != other["metadata"].get("generation"):
                return f"dependency GitSync {name} is not Ready"
        return None

    async def _fetch(self, obj: dict[str, Any], ctx: Context, spec: _Spec) -> source.Snapshot | None:
        """The source's current revision, or None after reporting why it cannot be read."""
        meta = obj["metadata"]
        secret_ref = (obj.get("spec") or {}).get("secretRef")
        creds = None
        if secret_ref:
            try:
                secret = await ctx.client.get(SECRETS, str(secret_ref["name"]), meta.get("namespace"))
                creds = credentials.Credentials.from_secret(secret)
            except (ApiError, credentials.CredentialError) as exc:
                problem = "not found" if isinstance(exc, ApiError) and exc.status == 404 else str(exc)
                message = f'Secret "{secret_ref["name"]}" (secretRef): {problem}'
                await self._report(obj, ctx, ready=("False", "AuthenticationFailed", message))
                return None
        cache = self.data_dir / str(meta.get("namespace")) / str(meta["name"])
        try:
            return await source.fetch(
                url=spec.url, ref=spec.ref, path=spec.path, cache=cache, credentials=creds,
                timeout=spec.timeout, git_binary=self.settings.git, ssh_binary=self.settings.ssh,
                allow_local=self.settings.allow_local,
            )  # fmt: skip
        except source.SourceError as exc:
            await self._report(obj, ctx, ready=("False", "GitOperationFailed", str(exc)))
            return None

    def _parse(
        self, obj: dict[str, Any], snapshot: source.Snapshot, path: str
    ) -> list[manifests.Manifest]:
        key = object_key(obj)
        cached = self._parsed.get(key)
        if cached is not None and cached[:2] == (snapshot.revision, path):
            return cached[2]
        found = manifests.parse(snapshot.files)
        self._parsed[key] = (snapshot.revision, path, found)
        return found

    async def _finish(
        self, obj: dict[str, Any], ctx: Context, revision: str, outcome: Outcome, *, fresh: bool
    ) -> None:
        inventory = [item.to_status() for item in outcome.inventory]
        errors = [error.to_status() for error in outcome.errors] or None
        for change in outcome.changes:
            if change.action == "drifted":
                message = (
                    f"{change.item.describe()}: {', '.join(change.fields)} changed outside the "
                    f"source; put back to revision {revision}"
                )
                await ctx.event(obj, "DriftCorrected", message, "Warning")
        others = [c for c in outcome.changes if c.action != "drifted"]
        if others:
            listing = ", ".join(c.describe() for c in others[:_LISTED_CHANGES])
            more = len(others) - _LISTED_CHANGES
            listing += f" and {more} more" if more > 0 else ""
            await ctx.event(obj, "Synced", f"Revision {revision}: {listing}")
        failure = outcome.failure
        fields: dict[str, Any] = {
            "lastAttemptedRevision": revision,
            "inventory": inventory,
            "errors": errors,
        }
        if failure is not None:
            await self._report(
                obj, ctx, ready=("False", failure.reason, f"revision {revision}: {failure.message}"),
                stalled=failure.stalled, reconciling=("False", failure.reason, "The sync stopped"),
                fields=fields,
            )  # fmt: skip
            return
        fields["lastAppliedRevision"] = revision
        if fresh or outcome.changes:
            fields["lastSyncTime"] = _now()
        await self._report(
            obj, ctx, ready=("True", "ReconciliationSucceeded", f"Applied revision: {revision}"),
            reconciling=("False", "Succeeded", f"Applied revision: {revision}"), fields=fields,
        )  # fmt: skip

    # Deletion

    async def finalize(self, obj: dict[str, Any], ctx: Context) -> None:
        """Prune what the GitSync applied (unless it keeps its objects), then drop its cache."""
        meta = obj["metadata"]
        spec = obj.get("spec") or {}
        namespace = str(meta.get("namespace") or "default")
        if spec.get("prune", True) and not spec.get("suspend"):
            syncer = Syncer(
                self.op.client, self.kinds,
                Options(owner=Owner(namespace, str(meta["name"])), default_namespace=namespace),
                previous=_inventory(obj),
            )  # fmt: skip
            try:
                outcome = await syncer.prune_all()
            except ClientError as exc:
                log.warning("GitSync %s/%s: pruning on deletion failed: %s", namespace, meta["name"], exc)
            else:
                for error in outcome.errors:
                    log.warning("GitSync %s/%s: %s: %s", namespace, meta["name"], error.item.describe(), error.message)
        key = object_key(obj)
        self._parsed.pop(key, None)
        self._written.pop(key, None)
        repository = git.Repository(self.data_dir / namespace / str(meta["name"]))
        await repository.remove()

    # Status

    def _fresh(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The newer of the cached object and the one this controller last wrote."""
        key = object_key(obj)
        written = self._written.get(key)
        if written is None:
            return obj
        if _rv(written) > _rv(obj):
            return written
        del self._written[key]
        return obj

    async def _report(
        self,
        obj: dict[str, Any],
        ctx: Context,
        *,
        ready: Condition | None,
        stalled: bool = False,
        reconciling: Condition | None = None,
        fields: dict[str, Any] | None = None,
        final: bool = True,
    ) -> dict[str, Any]:
        """One merge patch of /status if anything would change; a Warning Event for a new
        failure. Only the `final` report of a reconcile says which sync request it handled.
        Returns the object as it is now."""
        meta = obj["metadata"]
        generation = meta.get("generation")
        status = obj.get("status") or {}
        conditions = status.get("conditions")
        wanted: list[tuple[str, Condition | None]] = [("Ready", ready), ("Reconciling", reconciling)]
        if ready is not None:
            wanted.append(
                ("Stalled", ("True", ready[1], ready[2]) if stalled else ("False", "NotStalled", ""))
            )
        for type_, value in wanted:
            if value is not None:
                conditions = set_condition(
                    conditions, type_, value[0], value[1], value[2], observed_generation=generation
                )
        patch: dict[str, Any] = {**(fields or {}), "conditions": conditions}
        if generation is not None:
            patch["observedGeneration"] = generation
        requested = (meta.get("annotations") or {}).get(SYNC_REQUESTED_ANNOTATION)
        if requested and final:
            patch["lastHandledSyncAt"] = requested
        if not status_changes(status, patch):
            return obj
        before = get_condition(obj, "Ready") or {}
        try:
            written = await ctx.client.update_status(
                GITSYNCS, meta["name"], meta.get("namespace"), patch, field_manager=self.op.name
            )
        except ApiError as exc:
            if exc.status == 404:
                return obj
            raise
        self._written[object_key(written)] = written
        if ready is not None and ready[0] == "False":
            if (before.get("reason"), before.get("message")) != (ready[1], ready[2]):
                await ctx.event(obj, ready[1], ready[2], "Warning")
        return written


def _parse_spec(spec: dict[str, Any], *, allow_local: bool, minimum: float) -> _Spec:
    url = str(spec.get("url") or "")
    transport = git.check_url(url, allow_local=allow_local)
    ref_spec = spec.get("ref") or {}
    ref = git.Ref(
        branch=ref_spec.get("branch") or None,
        tag=ref_spec.get("tag") or None,
        commit=(ref_spec.get("commit") or "").lower() or None,
    )
    path = git.normalize_path(spec.get("path"))
    interval = _duration(spec.get("interval") or "60s", "interval")
    if interval <= 0:
        raise ValueError("spec.interval must be more than 0s")
    timeout = _duration(spec["timeout"], "timeout") if spec.get("timeout") else max(interval, minimum)
    return _Spec(url, transport, ref, path, interval, timeout)


def _duration(text: str, name: str) -> float:
    value = str(text).strip()
    if not value or _DURATION.sub("", value):
        raise ValueError(f'spec.{name} "{text}" is not a duration (30s, 5m, 1h30m)')
    return sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(value))


def _inventory(obj: dict[str, Any]) -> list[InventoryItem]:
    entries = (obj.get("status") or {}).get("inventory") or []
    return [InventoryItem.from_status(e) for e in entries if isinstance(e, dict) and e.get("kind")]




def _rv(obj: dict[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def setup(op: Operator, settings: GitSyncSettings | None = None) -> GitSyncController:
    """Register the GitSync controller on `op`."""
    return GitSyncController(op, settings or GitSyncSettings())
