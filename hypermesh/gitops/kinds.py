"""Which kinds the server serves, for objects named by apiVersion and kind.

A source may hold any kind, including custom kinds whose CRD it brings itself, so kinds are
looked up in the server's discovery documents (`/api/v1`, then every group version under
`/apis`), never hard-coded. The answer is kept in memory; a kind not found triggers one fresh
walk (a CRD may have just been applied), at most once per `min_refresh` seconds.

The synchronous client has a discovery cache (`hypermesh.client.resources.Discovery`); the
asyncio client has none yet, so this module is the small async walk a controller needs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from hypermesh.client.aio import AsyncClient
from hypermesh.client.errors import ApiError
from hypermesh.client.resources import Resource

__all__ = ["Kinds"]

_GROUP_PRIORITY = {"": 0, "hypermesh.io": 1}


class Kinds:
    """A cache of (apiVersion, kind) -> Resource over one client."""

    def __init__(self, client: AsyncClient, *, min_refresh: float = 1.0) -> None:
        self.client = client
        self.min_refresh = min_refresh
        self._by_kind: dict[tuple[str, str], Resource] = {}
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def resource_for(self, api_version: str, kind: str) -> Resource | None:
        """The served Resource, or None when the server has no such kind."""
        found = self._by_kind.get((api_version, kind))
        if found is not None:
            return found
        await self.refresh(only_if_stale=True)
        return self._by_kind.get((api_version, kind))

    async def find_kind(self, kind: str) -> Resource | None:
        """The served Resource of `kind` in any group (core first, then hypermesh.io), for
        references that give no apiVersion."""
        for attempt in (0, 1):
            found = sorted(
                (r for (_, k), r in self._by_kind.items() if k == kind),
                key=lambda r: (_GROUP_PRIORITY.get(r.group, 2), r.group),
            )
            if found:
                return found[0]
            if attempt == 0:
                await self.refresh(only_if_stale=True)
        return None

    async def refresh(self, *, only_if_stale: bool = False) -> None:
        """Walk discovery again (skipped when `only_if_stale` and it was walked just now)."""
        async with self._lock:
            now = time.monotonic()
            if (
                only_if_stale
                and self._fetched_at is not None
                and now - self._fetched_at < self.min_refresh
            ):
                return
            self._by_kind = await self._walk()
            self._fetched_at = time.monotonic()

    async def _walk(self) -> dict[tuple[str, str], Resource]:
        paths = ["/api/v1"]
        groups = await self._get("/apis")
        for group in (groups or {}).get("groups") or []:
            for version in group.get("versions") or []:
                paths.append(f"/apis/{group['name']}/{version['version']}")
        listings = await asyncio.gather(*(self._get(path) for path in paths))
        found: dict[tuple[str, str], Resource] = {}
        for path, listing in zip(paths, listings, strict=True):
            if listing is None:
                continue
            group, version = _group_version(path)
            for resource in _resources(group, version, listing):
                found.setdefault((resource.api_version, resource.kind), resource)
        return found

    async def _get(self, path: str) -> dict[str, Any] | None:
        try:
            _, _, body = await self.client.request("GET", path)
        except ApiError as exc:
            if exc.status in (404, 503):
                return None  # a group going away while we walk
            raise
        value = orjson.loads(body) if body else None
        return value if isinstance(value, dict) else None


def _group_version(path: str) -> tuple[str, str]:
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        return "", parts[1]
    return parts[1], parts[2]


def _resources(group: str, version: str, listing: dict[str, Any]) -> list[Resource]:
    entries = [e for e in listing.get("resources") or [] if isinstance(e, dict)]
    subresources: dict[str, list[str]] = {}
    for entry in entries:
        name = str(entry.get("name", ""))
        if "/" in name:
            parent, sub = name.split("/", 1)
            subresources.setdefault(parent, []).append(sub)
    found = []
    for entry in entries:
        plural = str(entry.get("name", ""))
        if not plural or "/" in plural or not entry.get("kind"):
            continue
        found.append(
            Resource(
                group=group,
                version=version,
                kind=str(entry["kind"]),
                plural=plural,
                singular=str(entry.get("singularName") or str(entry["kind"]).lower()),
                namespaced=bool(entry.get("namespaced")),
                verbs=tuple(entry.get("verbs") or ()),
                subresources=tuple(subresources.get(plural, ())),
            )
        )
    return found
