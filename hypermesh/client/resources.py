"""Kinds the server serves, learned at run time: `Resource`, `Discovery`, `UnknownResource`.

A client that hard-coded its kinds could never show a CRD installed a minute ago, so names
typed by a user (`wl`, `workload`, `Workload`, `workloads.hypermesh.io`) are resolved against the
server's discovery documents. Aggregated discovery (`apidiscovery.k8s.io/v2`) returns every
group in two requests; servers without it get the classic walk (`/api/v1`, `/apis`, then one
request per group version).

Discovery changes rarely and every command needs it, so the result is kept on disk per server
for ten minutes (`$HYPERMESH_HOME/cache/discovery/<host>_<port>.json`, kubectl keeps a similar
cache). A name that is not in a cached copy triggers one fresh fetch before the client gives up,
so a new CRD is found at once; only then is the name reported unknown, with near matches.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from hypermesh.client import localstate
from hypermesh.client.errors import ApiError, ClientError
from hypermesh.client.http import Client

AGGREGATED_ACCEPT = (
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
)
# Ties between groups (a name served by two groups) go to the core group, then to ours.
_GROUP_PRIORITY = {"": 0, "hypermesh.io": 1}


@dataclass(frozen=True)
class Resource:
    """One kind as the server serves it: where it lives and what it is called."""

    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()

    def __hash__(self) -> int:
        # Resources key the controllers' indexes, hashed once per informer event: the
        # generated hash of all ten fields showed up in profiles. Equal resources agree on these.
        return hash((self.group, self.version, self.plural))

    @property
    def api_version(self) -> str:
        """`hypermesh.io/v1`, or just `v1` for the core group."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified_name(self) -> str:
        """`workloads.hypermesh.io`, or just `namespaces` for the core group, as kubectl prints."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(
        self,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        """The URL path of the collection, one object, or one object's subresource.

        A namespaced kind with `namespace=None` means all namespaces (a collection only).
        """
        parts = ["/api", self.version] if not self.group else ["/apis", self.group, self.version]
        if self.namespaced and namespace is not None:
            parts += ["namespaces", quote(namespace, safe="")]
        parts.append(self.plural)
        if name is not None:
            if self.namespaced and namespace is None:
                raise ValueError(f'{self.qualified_name} "{name}" needs a namespace')
            parts.append(quote(name, safe=""))
        if subresource is not None:
            if name is None:
                raise ValueError(f"subresource {subresource} needs an object name")
            parts.append(subresource)
        return "/".join(parts)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe form, for the discovery cache."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Resource:
        """The inverse of `to_json`; raises KeyError/TypeError on a malformed entry."""
        return cls(
            group=str(data["group"]),
            version=str(data["version"]),
            kind=str(data["kind"]),
            plural=str(data["plural"]),
            singular=str(data["singular"]),
            namespaced=bool(data["namespaced"]),
            short_names=tuple(data.get("short_names", ())),
            categories=tuple(data.get("categories", ())),
            verbs=tuple(data.get("verbs", ())),
            subresources=tuple(data.get("subresources", ())),
        )


class UnknownResource(ClientError):
    """No served kind goes by `name`; `suggestions` are near matches (plural names)."""

    def __init__(self, name: str, suggestions: list[str]) -> None:
        self.name = name
        self.suggestions = suggestions
        message = f'the server doesn\'t have a resource type "{name}"'
        if suggestions:
            quoted = [f'"{s}"' for s in suggestions]
            listing = (
                quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
            )
            message += f"; did you mean {listing}?"
        super().__init__(message)


class Discovery:
    """The kinds one server serves, fetched once and cached on disk for `ttl` seconds."""

    def __init__(
        self, client: Client, *, cache_dir: Path | None = None, ttl: float = 600.0
    ) -> None:
        self.client = client
        self.cache_dir = (
            cache_dir if cache_dir is not None else localstate.home() / "cache" / "discovery"
        )
        self.ttl = ttl
        self._resources: list[Resource] | None = None
        # True once this object has fetched from the server (no point refreshing again).
        self._fetched = False

    @property
    def cache_path(self) -> Path:
        """The cache file of this client's server."""
        return self.cache_dir / f"{localstate.server_key(self.client.config.server)}.json"

    def resources(self, *, refresh: bool = False) -> list[Resource]:
        """Every served kind (preferred version per group); `refresh` skips the caches."""
        if not refresh:
            if self._resources is not None:
                return self._resources
            cached = self._read_cache()
            if cached is not None:
                self._resources = cached
                return cached
        fetched = self._fetch()
        self._resources = fetched
        self._fetched = True
        self._write_cache(fetched)
        return fetched

    def resolve(self, name: str) -> Resource:
        """The kind `name` refers to (plural, singular, short name, kind, optionally `.group`)."""
        found = _match(self.resources(), name)
        if found is None and not self._fetched:
            # Maybe a CRD newer than the cache: look once more, at the server itself.
            found = _match(self.resources(refresh=True), name)
        if found is None:
            raise UnknownResource(name, _suggest(self.resources(), name))
        return found

    # The on-disk cache

    def _read_cache(self) -> list[Resource] | None:
        data = localstate.read_json(self.cache_path)
        if not isinstance(data, dict) or data.get("server") != self.client.config.server:
            return None
        fetched_at = data.get("fetched_at")
        if not isinstance(fetched_at, int | float) or not 0 <= time.time() - fetched_at < self.ttl:
            return None
        try:
            return [Resource.from_json(entry) for entry in data["resources"]]
        except (KeyError, TypeError, ValueError):
            return None

    def _write_cache(self, resources: list[Resource]) -> None:
        document = {
            "server": self.client.config.server,
            "fetched_at": time.time(),
            "resources": [r.to_json() for r in resources],
        }
        # A cache that cannot be written costs the next command two requests, nothing more.
        try:
            localstate.write_private(self.cache_path, orjson.dumps(document))
        except OSError:
            pass

    # Fetching

    def _fetch(self) -> list[Resource]:
        core = self.client.request("GET", "/api", accept=AGGREGATED_ACCEPT).json()
        groups = self.client.request("GET", "/apis", accept=AGGREGATED_ACCEPT).json()
        if _is_aggregated(core) and _is_aggregated(groups):
            return _dedupe(_from_aggregated(core) + _from_aggregated(groups))
        return _dedupe(self._classic(core, groups))

    def _classic(self, core: dict[str, Any], groups: dict[str, Any]) -> list[Resource]:
        found: list[Resource] = []
        versions = [("", v) for v in core.get("versions") or []]
        for group in groups.get("groups") or []:
            versions += [(group["name"], v["version"]) for v in group.get("versions") or []]
        for group_name, version in versions:
            path = f"/apis/{group_name}/{version}" if group_name else f"/api/{version}"
            try:
                listing = self.client.request("GET", path).json()
            except ApiError as exc:
                if exc.status in (404, 503):
                    continue  # a group version going away while we walk: skip it
                raise
            found += _from_resource_list(group_name, version, listing)
        return found


def _is_aggregated(document: Any) -> bool:
    return isinstance(document, dict) and document.get("kind") == "APIGroupDiscoveryList"


def _from_aggregated(document: dict[str, Any]) -> list[Resource]:
    found: list[Resource] = []
    for item in document.get("items") or []:
        group = (item.get("metadata") or {}).get("name") or ""
        for version_entry in item.get("versions") or []:
            version = version_entry["version"]
            for entry in version_entry.get("resources") or []:
                kind_ref = entry.get("responseKind") or {}
                plural = entry["resource"]
                found.append(
                    Resource(
                        group=group,
                        version=version,
                        kind=kind_ref.get("kind") or "",
                        plural=plural,
                        singular=entry.get("singularResource")
                        or (kind_ref.get("kind") or plural).lower(),
                        namespaced=entry.get("scope") == "Namespaced",
                        short_names=tuple(entry.get("shortNames") or ()),
                        categories=tuple(entry.get("categories") or ()),
                        verbs=tuple(entry.get("verbs") or ()),
                        subresources=tuple(
                            s["subresource"]
                            for s in entry.get("subresources") or ()
                            if "subresource" in s
                        ),
                    )
                )
    return found


def _from_resource_list(group: str, version: str, listing: dict[str, Any]) -> list[Resource]:
    entries = listing.get("resources") or []
    subresources: dict[str, list[str]] = {}
    for entry in entries:
        if "/" in entry["name"]:
            parent, sub = entry["name"].split("/", 1)
            subresources.setdefault(parent, []).append(sub)
    found: list[Resource] = []
    for entry in entries:
        plural = entry["name"]
        if "/" in plural:
            continue
        found.append(
            Resource(
                group=group,
                version=version,
                kind=entry.get("kind") or "",
                plural=plural,
                singular=entry.get("singularName") or (entry.get("kind") or plural).lower(),
                namespaced=bool(entry.get("namespaced")),
                short_names=tuple(entry.get("shortNames") or ()),
                categories=tuple(entry.get("categories") or ()),
                verbs=tuple(entry.get("verbs") or ()),
                subresources=tuple(subresources.get(plural, ())),
            )
        )
    return found


def _dedupe(resources: list[Resource]) -> list[Resource]:
    """One entry per (group, plural): the first, i.e. the preferred version's."""
    seen: set[tuple[str, str]] = set()
    kept: list[Resource] = []
    for resource in resources:
        key = (resource.group, resource.plural)
        if key not in seen:
            seen.add(key)
            kept.append(resource)
    return kept


# Resolving names


def _split(name: str) -> list[tuple[str, str | None, str | None]]:
    """The readings of `name` as (word, group, version): `wl.hypermesh.io`, `wl.v1.hypermesh.io`."""
    text = name.strip().lower()
    readings: list[tuple[str, str | None, str | None]] = [(text, None, None)]
    if "." in text:
        word, rest = text.split(".", 1)
        readings.insert(0, (word, rest, None))
        version, _, group = rest.partition(".")
        if group and version[:1] == "v" and version[1:2].isdigit():
            readings.insert(1, (word, group, version))
    return readings


def _match(resources: list[Resource], name: str) -> Resource | None:
    best: tuple[int, int, int] | None = None
    chosen: Resource | None = None
    for word, group, version in _split(name):
        if not word:
            continue
        for index, resource in enumerate(resources):
            if group is not None and resource.group != group:
                continue
            if version is not None and resource.version != version:
                continue
            if word == resource.plural:
                rank = 0
            elif word == resource.singular:
                rank = 1
            elif word in resource.short_names:
                rank = 2
            elif word == resource.kind.lower():
                rank = 3
            else:
                continue
            key = (rank, _GROUP_PRIORITY.get(resource.group, 2), index)
            if best is None or key < best:
                best, chosen = key, resource
        if chosen is not None:
            return chosen
    return None


def _suggest(resources: list[Resource], name: str) -> list[str]:
    import difflib

    names: dict[str, str] = {}
    for resource in resources:
        for candidate in (
            resource.plural,
            resource.singular,
            resource.kind.lower(),
            *resource.short_names,
        ):
            names.setdefault(candidate, resource.plural)
        names.setdefault(resource.qualified_name, resource.qualified_name)
    suggestions: list[str] = []
    for close in difflib.get_close_matches(name.strip().lower(), list(names), n=6, cutoff=0.6):
        plural = names[close]
        if plural not in suggestions:
            suggestions.append(plural)
    return suggestions[:3]
