"""Where a request goes: the Kubernetes URL grammar.

Resource URLs look like `/apis/GROUP/VERSION/namespaces/NS/PLURAL/NAME/SUBRESOURCE` (core kinds
under `/api/v1/...`). Namespaces themselves are a cluster-scoped kind, which makes
`/api/v1/namespaces/foo` (a Namespace) and `/api/v1/namespaces/foo/secrets` (a collection) share
a prefix: the parser decides by whether the third segment names a namespaced kind of that
group-version.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypermesh.resources.registry import Registry, ResourceType


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed resource URL."""

    rtype: ResourceType
    namespace: str | None  # None: all namespaces (or a cluster-scoped kind)
    name: str | None  # None: the collection
    subresource: str | None  # "status", or None
    # What follows `/proxy/` in `.../nodes/NAME/proxy/PATH` (the node agent's own path).
    proxy_path: str | None = None


@dataclass(frozen=True, slots=True)
class GroupVersionPath:
    """A discovery URL: `/apis/G`, `/apis/G/V` or `/api/v1` (version empty for `/apis/G`)."""

    group: str
    version: str


def parse(path: str, registry: Registry) -> Target | GroupVersionPath | None:
    """The target of `path`, or None when it names nothing this server serves."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return None
    if parts[0] == "api":
        if len(parts) < 2:
            return None
        group, version, rest = "", parts[1], parts[2:]
    elif parts[0] == "apis":
        if len(parts) == 2:
            return GroupVersionPath(parts[1], "")
        if len(parts) < 3:
            return None
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not rest:
        return GroupVersionPath(group, version)

    # A namespaced request: namespaces/NS/PLURAL[/NAME[/SUB]] where PLURAL is a namespaced kind.
    if rest[0] == "namespaces" and len(rest) >= 3:
        rtype = registry.by_plural(group, version, rest[2])
        if rtype is not None and rtype.namespaced:
            if len(rest) > 5:
                return None
            name = rest[3] if len(rest) > 3 else None
            sub = rest[4] if len(rest) > 4 else None
            return Target(rtype, rest[1], name, sub)

    rtype = registry.by_plural(group, version, rest[0])
    if rtype is not None and len(rest) > 3 and rest[2] == "proxy" and not rtype.namespaced:
        # `.../nodes/NAME/proxy/PATH...`: the rest of the URL is the agent's.
        return Target(rtype, None, rest[1], "proxy", proxy_path="/".join(rest[3:]))
    if rtype is None or len(rest) > 3:
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if rtype.namespaced and name is not None:
        # `/apis/G/V/workloads/web` is not a valid URL: names need a namespace.
        return None
    return Target(rtype, None, name, sub)
