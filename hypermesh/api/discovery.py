"""Discovery documents: how clients learn which kinds exist.

Served in both forms kubectl understands: the classic per-group-version `APIResourceList`s,
and aggregated discovery (`apidiscovery.k8s.io/v2`), which lets kubectl learn everything in two
requests instead of 2 + one per group-version. Documents are built once per registry generation
and reused until a CRD changes the set of kinds.
"""

from __future__ import annotations

from typing import Any

import orjson

from hypermesh.api.binding import bindable
from hypermesh.api.proxy import proxied
from hypermesh.resources.registry import Registry, ResourceType

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
STATUS_VERBS = ["get", "patch", "update"]
AGGREGATED_CT = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
GIT_VERSION = "v1.33.0-hypermesh.0.1.0"


def version_info() -> dict[str, Any]:
    """`/version`: kubectl and dispatchers read `minor` to pick behaviour."""
    return {
        "major": "1",
        "minor": "33",
        "gitVersion": GIT_VERSION,
        "gitCommit": "hypermesh",
        "gitTreeState": "clean",
        "buildDate": "2026-11-27T00:00:00Z",
        "goVersion": "python3.11",
        "compiler": "cpython",
        "platform": "linux/amd64",
    }


def wants_aggregated(accept: str) -> bool:
    return "as=APIGroupDiscoveryList" in accept and "v=v2" in accept


class Discovery:
    """Discovery documents, cached per registry generation."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._generation = -1
        self._cache: dict[Any, bytes] = {}

    def _cached(self, key: Any, build: Any) -> bytes:
        if self._generation != self.registry.generation:
            self._cache.clear()
            self._generation = self.registry.generation
        body = self._cache.get(key)
        if body is None:
            body = orjson.dumps(build())
            self._cache[key] = body
        return body

    def _types(self, group: str) -> list[ResourceType]:
        return sorted((t for t in self.registry.all() if t.group == group and t.served), key=lambda t: (t.version, t.plural))

    def _versions(self, group: str) -> list[str]:
        return sorted({t.version for t in self._types(group)}, key=_version_priority)

    def core_versions(self) -> bytes:
        return self._cached("api", lambda: {"kind": "APIVersions", "apiVersion": "v1", "versions": ["v1"], "serverAddressByClientCIDRs": []})

    def group_list(self) -> bytes:
        def build() -> dict[str, Any]:
            groups = []
            for group in sorted({t.group for t in self.registry.all() if t.group}):
                groups.append(self._group(group))
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

        return self._cached("apis", build)

    def _group(self, group: str) -> dict[str, Any]:
        versions = self._versions(group)
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0] if entries else None}

    def group(self, group: str) -> bytes | None:
        if not self._versions(group):
            return None
        return self._cached(("group", group), lambda: {"kind": "APIGroup", "apiVersion": "v1", **self._group(group)})

    def resource_list(self, group: str, version: str) -> bytes | None:
        types = [t for t in self._types(group) if t.version == version]
        if not types:
            return None

        def build() -> dict[str, Any]:
            resources: list[dict[str, Any]] = []
            for t in types:
                entry: dict[str, Any] = {
                    "name": t.plural,
                    "singularName": t.singular,
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": VERBS,
                }
                if t.short_names:
                    entry["shortNames"] = list(t.short_names)
                if t.categories:
                    entry["categories"] = list(t.categories)
                resources.append(entry)
                if t.has_status:
                    resources.append({"name": f"{t.plural}/status", "singularName": "", "namespaced": t.namespaced, "kind": t.kind, "verbs": STATUS_VERBS})
                if bindable(t):
                    resources.append({"name": f"{t.plural}/binding", "singularName": "", "namespaced": t.namespaced, "kind": "Binding", "verbs": ["create"]})
                if proxied(t):
                    # As pods/log and pods/exec: the log reads as the Instance's kind, exec takes options.
                    resources.append({"name": f"{t.plural}/log", "singularName": "", "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get"]})
                    resources.append({"name": f"{t.plural}/exec", "singularName": "", "namespaced": t.namespaced, "kind": f"{t.kind}ExecOptions", "verbs": ["create"]})
            return {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": resources,
            }

        return self._cached(("rl", group, version), build)

    def aggregated(self, core: bool) -> bytes:
        """`/api` (core only) or `/apis` (every named group) as an APIGroupDiscoveryList."""

        def build() -> dict[str, Any]:
            groups = [""] if core else sorted({t.group for t in self.registry.all() if t.group})
            items = []
            for group in groups:
                versions = []
                for version in self._versions(group):
                    resources = []
                    for t in self._types(group):
                        if t.version != version:
                            continue
                        kind_ref = {"group": group, "version": version, "kind": t.kind}
                        entry: dict[str, Any] = {
                            "resource": t.plural,
                            "responseKind": kind_ref,
                            "scope": "Namespaced" if t.namespaced else "Cluster",
                            "singularResource": t.singular,
                            "verbs": VERBS,
                        }
                        if t.short_names:
                            entry["shortNames"] = list(t.short_names)
                        if t.categories:
                            entry["categories"] = list(t.categories)
                        subresources = []
                        if t.has_status:
                            subresources.append({"subresource": "status", "responseKind": kind_ref, "verbs": STATUS_VERBS})
                        if bindable(t):
                            subresources.append({"subresource": "binding", "responseKind": {"group": "", "version": "v1", "kind": "Binding"}, "verbs": ["create"]})
                        if proxied(t):
                            subresources.append({"subresource": "log", "responseKind": kind_ref, "verbs": ["get"]})
                            subresources.append({"subresource": "exec", "responseKind": {**kind_ref, "kind": f"{t.kind}ExecOptions"}, "verbs": ["create"]})
                        if subresources:
                            entry["subresources"] = subresources
                        resources.append(entry)
                    versions.append({"version": version, "resources": resources, "freshness": "Current"})
                items.append({"metadata": {"name": group, "creationTimestamp": None}, "versions": versions})
            return {"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items}

        return self._cached(("agg", core), build)


def _version_priority(version: str) -> tuple[int, int, int]:
    """Kubernetes version order: GA before beta before alpha, higher numbers first."""
    import re

    match = re.match(r"^v(\d+)(?:(alpha|beta)(\d+))?$", version)
    if not match:
        return (3, 0, 0)
    major, stage, minor = int(match.group(1)), match.group(2), int(match.group(3) or 0)
    rank = {None: 0, "beta": 1, "alpha": 2}[stage]
    return (rank, -major, -minor)
