"""One sync: a revision's manifests made true in the cluster, in waves, then the leftovers pruned.

The order of a sync, and why:

1. Plan: every manifest is matched to a served kind (a kind whose CRD the same revision brings
   is deferred), given its namespace (its own, else the target namespace) and the ownership
   labels (`gitsync.hypermesh.io/name`, `/namespace`).
2. Validate everything before applying anything: each object's live copy is read (an object
   labelled as another GitSync's is refused) and a server-side dry run of the apply shows
   whether the server accepts it and what it would change. One bad object stops the whole
   revision, and the last good state stays applied. The only exceptions are objects that
   cannot be dry-run yet, because their Namespace or CRD comes in the same revision: those are
   validated right after step 3, before any other object is applied (Flux does the same).
3. CRDs and Namespaces first, then waiting until they are Established/Active.
4. Waves (`hypermesh.io/sync-wave`, integer, default 0) in ascending order, each object by
   kind (Secrets before Workloads, ...), each wave only after the previous one is healthy
   (`hypermesh.io/gitops/health.py`); with `wait`, the last wave too.
5. Prune: what the previous inventory holds and this revision does not is deleted, but only if
   it still carries this GitSync's labels, this field manager still owns fields of it, and it
   is not annotated `hypermesh.io/prune: disabled`. Pruning runs only after a complete sync.

Applies are server-side applies with `force`, under the field manager `gitsync/<name>`: the
source is the authority, so a field someone changed by hand is taken back. Whether an apply is
needed at all, and which fields it changes, comes from the dry run compared with the live
object (`hypermesh.gitops.diff`); an object whose configuration is the one applied last time
(the inventory keeps a digest of it) but whose live copy differs has drifted, and the change
says which fields.
"""

from __future__ import annotations

import asyncio
import copy
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from hypermesh.client.aio import PATCH_CONTENT_TYPES, AsyncClient
from hypermesh.client.errors import ApiError, ClientError
from hypermesh.client.resources import Resource
from hypermesh.gitops import diff, health
from hypermesh.gitops.inventory import (
    Change,
    InventoryItem,
    ObjectFailure,
    Outcome,
    Owner,
    SyncFailed,
)
from hypermesh.gitops.kinds import Kinds
from hypermesh.gitops.manifests import PRUNE_ANNOTATION, Manifest, ManifestError
from hypermesh.operator.bounded import gather_bounded

__all__ = ["Options", "Syncer", "scrub"]

# Requests of one phase (reads, dry runs, health polls) in flight at once.
_CONCURRENCY = 16
# Apply order inside a wave (Helm's and Flux's, with HyperMesh's kinds); others go after these,
# GitSyncs last (they may depend on everything else).
_KIND_ORDER = [
    "Namespace", "CustomResourceDefinition", "PriorityClass", "ResourceQuota", "LimitRange",
    "ServiceAccount", "Secret", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "Role",
    "RoleBinding", "Certificate", "Service", "Endpoints", "Workload", "Instance",
]  # fmt: skip
_STAGE_ZERO = {("v1", "Namespace"), ("apiextensions.k8s.io/v1", "CustomResourceDefinition")}
_NAMESPACES = Resource("", "v1", "Namespace", "namespaces", "namespace", False)


@dataclass(frozen=True)
class Options:
    """How one sync behaves (from the GitSync's spec)."""

    owner: Owner
    default_namespace: str
    prune: bool = True
    wait: bool = False
    timeout: float = 60.0
    # (apiVersion, kind, namespace, name) of other objects that must be healthy at the end.
    health_checks: tuple[tuple[str, str, str | None, str], ...] = ()
    poll: float = 0.5


@dataclass
class _Item:
    """One planned object."""

    manifest: Manifest
    obj: dict[str, Any]
    resource: Resource | None
    namespace: str | None
    live: dict[str, Any] | None = None
    dry_run: dict[str, Any] | None = None
    # Validated after stage zero: its kind or Namespace comes with the same revision.
    deferred: bool = False

    @property
    def stage_zero(self) -> bool:
        return (self.manifest.api_version, self.manifest.kind) in _STAGE_ZERO

    @property
    def inventory(self) -> InventoryItem:
        return InventoryItem(
            self.manifest.api_version,
            self.manifest.kind,
            self.manifest.name,
            self.namespace,
            diff.digest(self.obj),
        )


@dataclass(frozen=True)
class _Target:
    """An object a health wait looks at."""

    resource: Resource
    namespace: str | None
    name: str
    item: InventoryItem


class _Invalid(Exception):
    def __init__(self, errors: list[tuple[ManifestError, bool]]) -> None:
        self.errors = errors


class Syncer:
    """Runs syncs for one GitSync over one client."""

    def __init__(
        self,
        client: AsyncClient,
        kinds: Kinds,
        options: Options,
        *,
        previous: Iterable[InventoryItem] = (),
    ) -> None:
        self.client = client
        self.kinds = kinds
        self.options = options
        self.previous = {item.key: item for item in previous}
        self._deadline = 0.0

    async def run(self, manifests: list[Manifest]) -> Outcome:
        """Apply `manifests` and prune; never raises for what a status can report."""
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self.options.timeout
        outcome = Outcome()
        # Until the sync completes, everything applied before stays in the inventory.
        applied: dict[tuple[str, str, str | None, str], InventoryItem] = dict(self.previous)
        try:
            items = await self._plan(manifests)
            await self._validate([i for i in items if not i.deferred])
            zero = sorted((i for i in items if i.stage_zero), key=_order)
            await self._apply_wave(zero, outcome, applied)
            await self._wait(zero, outcome)
            if any(i.manifest.kind == "CustomResourceDefinition" for i in zero):
                await self.kinds.refresh()
            deferred = [i for i in items if i.deferred]
            if deferred:
                await self._resolve(deferred)
                await self._validate(deferred)
            rest = [i for i in items if not i.stage_zero]
            waves = sorted({i.manifest.wave for i in rest})
            for index, wave in enumerate(waves):
                members = sorted((i for i in rest if i.manifest.wave == wave), key=_order)
                await self._apply_wave(members, outcome, applied)
                if index < len(waves) - 1 or self.options.wait:
                    await self._wait(members, outcome, wave=wave)
            await self._wait_health_checks(outcome)
            current = {i.inventory.key: i.inventory for i in items}
            leftovers = await self._prune(current, outcome) if self.options.prune else []
            outcome.inventory = sorted([*current.values(), *leftovers], key=_inventory_order)
        except _Invalid as exc:
            messages = "; ".join(str(e) for e, _ in exc.errors[:5])
            more = len(exc.errors) - 5
            outcome.failure = SyncFailed(
                "ValidationFailed",
                messages + (f"; and {more} more" if more > 0 else ""),
                stalled=any(stalled for _, stalled in exc.errors),
            )
        except SyncFailed as exc:
            outcome.failure = exc
        except ClientError as exc:
            outcome.failure = SyncFailed("ReconciliationFailed", str(exc))
        if outcome.failure is not None:
            outcome.inventory = sorted(applied.values(), key=_inventory_order)
        return outcome

    # Planning and validating

    async def _plan(self, manifests: list[Manifest]) -> list[_Item]:
        crd_kinds = _kinds_of_crds(manifests)
        items = [
            _Item(manifest, copy.deepcopy(manifest.obj), None, None) for manifest in manifests
        ]
        errors: list[tuple[ManifestError, bool]] = []
        for item in items:
            manifest = item.manifest
            key = (manifest.api_version, manifest.kind)
            resource = await self.kinds.resource_for(*key)
            if resource is None and key not in crd_kinds:
                message = (
                    f'no kind "{manifest.kind}" is served in version "{manifest.api_version}" '
                    "(is its CustomResourceDefinition installed?)"
                )
                errors.append((manifest.error(message, "kind", named=True), False))
                continue
            namespaced = resource.namespaced if resource is not None else crd_kinds[key]
            self._place(item, namespaced)
            item.resource = resource
            item.deferred = resource is None
        if errors:
            raise _Invalid(errors)
        # Objects going into a Namespace this revision creates cannot be dry-run before it is.
        brought = {i.manifest.name for i in items if (i.manifest.api_version, i.manifest.kind) == ("v1", "Namespace")}
        wanted = {i.namespace for i in items if i.namespace in brought}
        missing = await self._missing_namespaces({n for n in wanted if n is not None})
        for item in items:
            item.deferred = item.deferred or item.namespace in missing
        return items

    def _place(self, item: _Item, namespaced: bool) -> None:
        meta = item.obj.setdefault("metadata", {})
        if namespaced:
            item.namespace = item.manifest.namespace or self.options.default_namespace
            meta["namespace"] = item.namespace
        else:
            item.namespace = None
            meta.pop("namespace", None)
        meta["labels"] = {**(meta.get("labels") or {}), **self.options.owner.labels}

    async def _resolve(self, items: list[_Item]) -> None:
        errors = []
        for item in items:
            if item.resource is None:
                item.resource = await self.kinds.resource_for(
                    item.manifest.api_version, item.manifest.kind
                )
            if item.resource is None:
                message = f'no kind "{item.manifest.kind}" is served in version "{item.manifest.api_version}" even after its CustomResourceDefinition was applied'
                errors.append((item.manifest.error(message, "kind", named=True), False))
        if errors:
            raise _Invalid(errors)

    async def _missing_namespaces(self, names: set[str]) -> set[str]:
        missing: set[str] = set()

        async def check(name: str) -> None:
            if await self._get(_NAMESPACES, name, None) is None:
                missing.add(name)

        await gather_bounded(sorted(names), check, _CONCURRENCY)
        return missing

    async def _validate(self, items: list[_Item]) -> None:
        """Read each object and dry-run its apply; _Invalid lists every problem."""
        errors: list[tuple[ManifestError, bool]] = []
        owner = self.options.owner

        async def check(item: _Item) -> None:
            assert item.resource is not None
            item.live = await self._get(item.resource, item.manifest.name, item.namespace)
            other = owner.other_owner(item.live) if item.live is not None else None
            if other is not None:
                message = f"{item.manifest.describe()} is managed by GitSync {other}; not applied"
                errors.append((item.manifest.error(message), False))
                return
            try:
                item.dry_run = await self._apply_request(item, dry_run=True)
            except ApiError as exc:
                errors.extend(_located(item.manifest, exc))

        await gather_bounded(items, check, _CONCURRENCY)
        if errors:
            errors.sort(key=lambda e: (e[0].file, e[0].line or 0))
            raise _Invalid(errors)

    # Applying

    async def _apply_wave(
        self,
        items: list[_Item],
        outcome: Outcome,
        applied: dict[tuple[str, str, str | None, str], InventoryItem],
    ) -> None:
        failures: list[ObjectFailure] = []
        for item in items:
            inventory = item.inventory
            try:
                change = await self._apply(item)
            except ApiError as exc:
                failures.append(ObjectFailure(inventory, scrub(item.obj, str(exc))))
                continue
            applied[inventory.key] = inventory
            if change is not None:
                outcome.changes.append(change)
        if failures:
            outcome.errors.extend(failures)
            listing = "; ".join(
                f"{f.item.describe()}: {f.message}" for f in failures[:5]
            )
            raise SyncFailed("ApplyFailed", f"{len(failures)} object(s) could not be applied: {listing}")

    async def _apply(self, item: _Item) -> Change | None:
        live, dry = item.live, item.dry_run
        manager = self.options.owner.manager
        if live is not None and dry is not None and _applied_by(live, manager):
            if diff.comparable(live) == diff.comparable(dry):
                return None
        result = await self._apply_request(item, dry_run=False)
        inventory = item.inventory
        if live is None:
            return Change("created", inventory)
        paths = diff.changed_paths(diff.comparable(live), diff.comparable(dry or result))
        if not paths:
            return None  # only the field ownership moved to this GitSync
        before = self.previous.get(inventory.key)
        if before is not None and before.digest == inventory.digest:
            return Change("drifted", inventory, tuple(paths))
        return Change("configured", inventory, tuple(paths))

    async def _apply_request(self, item: _Item, *, dry_run: bool) -> dict[str, Any]:
        assert item.resource is not None
        query = [
            ("fieldManager", self.options.owner.manager),
            ("force", "true"),
            ("fieldValidation", "Strict"),
        ]
        if dry_run:
            query.append(("dryRun", "All"))
        path = item.resource.path(item.namespace, item.manifest.name)
        _, _, body = await self.client.request(
            "PATCH", path, query=query, body=item.obj, content_type=PATCH_CONTENT_TYPES["apply"]
        )
        result = orjson.loads(body) if body else {}
        return result if isinstance(result, dict) else {}

    # Health

    async def _wait(self, items: list[_Item], outcome: Outcome, *, wave: int | None = None) -> None:
        targets = [
            _Target(i.resource, i.namespace, i.manifest.name, i.inventory)
            for i in items
            if i.resource is not None
        ]
        what = f"wave {wave}" if wave is not None else "CRDs and Namespaces"
        await self._wait_for(targets, outcome, what)

    async def _wait_health_checks(self, outcome: Outcome) -> None:
        targets = []
        for api_version, kind, namespace, name in self.options.health_checks:
            if api_version:
                resource = await self.kinds.resource_for(api_version, kind)
            else:
                resource = await self.kinds.find_kind(kind)
                api_version = resource.api_version if resource is not None else ""
            item = InventoryItem(api_version, kind, name, namespace)
            if resource is None:
                failure = ObjectFailure(item, f'no kind "{kind}" is served in "{api_version}"')
                outcome.errors.append(failure)
                raise SyncFailed("HealthCheckFailed", f"{item.describe()}: {failure.message}")
            ns = (namespace or self.options.default_namespace) if resource.namespaced else None
            targets.append(_Target(resource, ns, name, InventoryItem(api_version, kind, name, ns)))
        if targets:
            await self._wait_for(targets, outcome, "the health checks")

    async def _wait_for(self, targets: list[_Target], outcome: Outcome, what: str) -> None:
        """Poll `targets` until all are healthy; SyncFailed when one fails or time runs out."""
        loop = asyncio.get_running_loop()
        pending = list(targets)
        while pending:
            states = await self._assess(pending)
            failed = [(t.item, s) for t, s in zip(pending, states, strict=True) if s.state == "Failed"]
            waiting = [(t.item, s) for t, s in zip(pending, states, strict=True) if s.state == "InProgress"]
            late = loop.time() >= self._deadline
            if failed or (waiting and late):
                bad = failed + (waiting if late else [])
                outcome.errors.extend(ObjectFailure(item, s.message) for item, s in bad)
                listing = "; ".join(f"{item.describe()}: {s.message}" for item, s in bad[:5])
                why = "failed" if failed else f"not healthy after {self.options.timeout:g}s"
                raise SyncFailed("HealthCheckFailed", f"{what} {why}: {listing}")
            pending = [t for t, s in zip(pending, states, strict=True) if s.state == "InProgress"]
            if pending:
                await asyncio.sleep(min(self.options.poll, max(0.0, self._deadline - loop.time())))

    async def _assess(self, targets: list[_Target]) -> list[health.Health]:
        states: list[health.Health] = [health.CURRENT] * len(targets)

        async def look(index: int) -> None:
            target = targets[index]
            live = await self._get(target.resource, target.name, target.namespace)
            states[index] = health.assess(live)

        await gather_bounded(range(len(targets)), look, _CONCURRENCY)
        return states

    # Pruning

    async def prune_all(self) -> Outcome:
        """Delete every object of the previous inventory this GitSync still owns (it is being
        deleted); `inventory` holds what could not be deleted."""
        outcome = Outcome()
        outcome.inventory = await self._prune({}, outcome)
        return outcome

    async def _prune(
        self, current: dict[tuple[str, str, str | None, str], InventoryItem], outcome: Outcome
    ) -> list[InventoryItem]:
        """Delete what the previous inventory has and `current` does not; returns the items
        that could not be deleted (they stay in the inventory for the next try)."""
        gone = [item for key, item in self.previous.items() if key not in current]
        gone.sort(key=_inventory_order, reverse=True)
        leftovers: list[InventoryItem] = []
        for item in gone:
            resource = await self.kinds.resource_for(item.api_version, item.kind)
            if resource is None:
                continue  # the kind itself is gone, and its objects with it
            try:
                deleted = await self._prune_one(resource, item)
            except ApiError as exc:
                outcome.errors.append(ObjectFailure(item, f"prune failed: {exc}"))
                leftovers.append(item)
                continue
            if deleted:
                outcome.changes.append(Change("pruned", item))
        return leftovers

    async def _prune_one(self, resource: Resource, item: InventoryItem) -> bool:
        live = await self._get(resource, item.name, item.namespace)
        if live is None or (live.get("metadata") or {}).get("deletionTimestamp"):
            return False
        annotations = (live.get("metadata") or {}).get("annotations") or {}
        owner = self.options.owner
        # Never an object this GitSync does not own (any more).
        if not owner.owns(live) or not _applied_by(live, owner.manager):
            return False
        if str(annotations.get(PRUNE_ANNOTATION, "")).lower() == "disabled":
            return False
        try:
            await self.client.delete(resource, item.name, item.namespace, propagation="Background")
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def _get(
        self, resource: Resource, name: str, namespace: str | None
    ) -> dict[str, Any] | None:
        try:
            return await self.client.get(resource, name, namespace)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise


def _applied_by(obj: dict[str, Any], manager: str) -> bool:
    entries = (obj.get("metadata") or {}).get("managedFields") or []
    return any(
        isinstance(e, dict) and e.get("manager") == manager and e.get("operation") == "Apply"
        for e in entries
    )


def _kinds_of_crds(manifests: list[Manifest]) -> dict[tuple[str, str], bool]:
    """(apiVersion, kind) -> namespaced, for every kind the CRDs among `manifests` define."""
    found: dict[tuple[str, str], bool] = {}
    for manifest in manifests:
        if manifest.kind != "CustomResourceDefinition":
            continue
        spec = manifest.obj.get("spec") or {}
        group, kind = spec.get("group"), (spec.get("names") or {}).get("kind")
        namespaced = spec.get("scope", "Namespaced") == "Namespaced"
        for version in spec.get("versions") or []:
            if isinstance(version, dict) and group and kind and version.get("name"):
                found[(f"{group}/{version['name']}", str(kind))] = namespaced
    return found


def _located(manifest: Manifest, exc: ApiError) -> list[tuple[ManifestError, bool]]:
    """The server's refusal of a dry run, at the file and line of each field it names."""
    stalled = exc.status in (400, 422)
    body = exc.status_body if isinstance(exc.status_body, dict) else {}
    causes = [c for c in (body.get("details") or {}).get("causes") or [] if isinstance(c, dict)]
    if exc.status == 422 and causes:
        return [
            (
                manifest.error(
                    scrub(manifest.obj, str(c.get("message") or exc.message)),
                    c.get("field") or None,
                    named=True,
                ),
                stalled,
            )
            for c in causes
        ]
    unknown = re.findall(r'unknown field "([^"]+)"', exc.message)
    if unknown:
        return [(manifest.error("unknown field", path, named=True), stalled) for path in unknown]
    return [(manifest.error(scrub(manifest.obj, exc.message), named=True), stalled)]


def scrub(obj: dict[str, Any], message: str) -> str:
    """`message` without the values of a Secret's `data` and `stringData`: the server quotes a
    bad value in its refusal, and a GitSync's status and Events are readable by people who may
    not read Secrets."""
    if obj.get("kind") != "Secret" or _group(str(obj.get("apiVersion", ""))) != "":
        return message
    forms: set[str] = set()
    for section in ("data", "stringData"):
        values = obj.get(section)
        if not isinstance(values, dict):
            continue
        for value in values.values():
            encoded = orjson.dumps(value).decode()
            forms.update({encoded, _json_quoted(str(value))})
            if len(str(value)) >= 4:
                forms.add(str(value))
    for form in sorted(forms, key=len, reverse=True):
        message = message.replace(form, "[redacted]")
    return message


def _json_quoted(text: str) -> str:
    return orjson.dumps(text).decode()


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def _rank(kind: str) -> int:
    if kind == "GitSync":
        return len(_KIND_ORDER) + 1
    return _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)


def _order(item: _Item) -> tuple[int, str, str, str]:
    m = item.manifest
    return (_rank(m.kind), m.kind, item.namespace or "", m.name)


def _inventory_order(item: InventoryItem) -> tuple[int, str, str, str]:
    return (_rank(item.kind), item.kind, item.namespace or "", item.name)
