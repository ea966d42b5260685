"""The kind registry: which resource types the API server serves, and how to find one.

Every kind HyperMesh serves is described the same way, as an `apiextensions.k8s.io/v1`
CustomResourceDefinition: the `hypermesh.io` kinds in the repository's `crds/` directory (the
files users can also read and `kubectl apply` elsewhere), the few built-in kinds that Kubernetes
clients expect (Namespace, Event, Secret, Lease, CustomResourceDefinition) in the packaged
`builtin/` directory, and user CRDs arriving through the API. One path turns any of them into
`ResourceType`s, so discovery, OpenAPI, table printing and validation never special-case a kind.

Two conventions make the built-ins fit the CRD shape:
- The core group is the empty string. A real CRD cannot say `group: ""`; `types_from_crd`
  accepts it only with `builtin=True`, and then expects `metadata.name` to be just the plural.
- Where the CRD files live. `CRD_DIR` is the repository's `crds/` directory when running from a
  checkout (an editable install, the normal case), found relative to this file. An installed
  wheel has no repository around it, so the package carries `hypermesh/resources/crds`, a
  symlink to `../../crds` that setuptools turns into copies when it builds a wheel (package
  data must list `resources/builtin/*.yaml` and `resources/crds/*.yaml`).

`Registry` itself is a plain mutable index owned by the API server (no module-level instance):
it bumps `generation` on every change so that discovery documents can be cached until then.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hypermesh.resources.errors import CRDError
from hypermesh.resources.schema import CompiledSchema, compile_schema
from hypermesh.resources.values import render

__all__ = [
    "BUILTIN_DIR",
    "CRD_DIR",
    "PrinterColumn",
    "Registry",
    "ResourceType",
    "builtin_types",
    "load_crd_file",
    "types_from_crd",
]

_PACKAGE_DIR = Path(__file__).resolve().parent
BUILTIN_DIR = _PACKAGE_DIR / "builtin"
_CHECKOUT_CRD_DIR = _PACKAGE_DIR.parents[1] / "crds"
_PACKAGED_CRD_DIR = _PACKAGE_DIR / "crds"
# A checkout is recognised by one of its CRD files, not just by a directory of that name, so an
# unrelated `crds/` beside site-packages can never be picked up.
CRD_DIR = (
    _CHECKOUT_CRD_DIR if (_CHECKOUT_CRD_DIR / "workload.yaml").is_file() else _PACKAGED_CRD_DIR
)

_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
_KIND = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")
_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")
_COLUMN_TYPES = ("integer", "number", "string", "boolean", "date")

# Groups a short, ambiguous name resolves to first: core, then HyperMesh's own kinds, which is
# what a HyperMesh user means by `svc` or `nodes`.
_GROUP_PRIORITY = {"": 0, "hypermesh.io": 1}


@dataclass(frozen=True)
class PrinterColumn:
    """One `additionalPrinterColumns` entry: a column of `kubectl get`'s table."""

    name: str
    type: str
    json_path: str
    format: str = ""
    description: str = ""
    priority: int = 0


_AGE_COLUMN = PrinterColumn(
    name="Age",
    type="date",
    json_path=".metadata.creationTimestamp",
    description="Time since the object was created.",
)


@dataclass(frozen=True)
class ResourceType:
    """One served version of one kind, with everything the API server needs to serve it."""

    group: str
    version: str
    kind: str
    plural: str
    singular: str
    list_kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    # The version's openAPIV3Schema for the whole object, with apiVersion, kind and metadata
    # always declared.
    schema: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    printer_columns: tuple[PrinterColumn, ...] = ()
    has_status: bool = False
    served: bool = True
    storage: bool = True
    _validator: CompiledSchema | None = field(default=None, compare=False, repr=False)

    @property
    def api_version(self) -> str:
        """`group/version`, or just the version for the core group (`v1`)."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        """The `plural.group` name Kubernetes messages use (`workloads.hypermesh.io`)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def validator(self) -> CompiledSchema:
        """The compiled schema, compiled once and kept with the type."""
        if self._validator is None:
            # Frozen for callers, but the cache is filled lazily for types built by hand.
            object.__setattr__(self, "_validator", compile_schema(self.schema))
        assert self._validator is not None
        return self._validator

    def key_prefix(self, namespace: str | None) -> str:
        """The store prefix of all objects of the type, or of one namespace's objects."""
        prefix = f"/registry/{self.group or 'core'}/{self.plural}/"
        return f"{prefix}{namespace}/" if namespace else prefix

    def key(self, namespace: str | None, name: str) -> str:
        """The store key of one object."""
        return f"{self.key_prefix(namespace)}{name}"


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Sort key putting versions in Kubernetes' preference order: v2, v1, v1beta1, v1alpha1, x."""
    match = _VERSION.match(version)
    if match is None:
        return (3, 0, 0, version)
    major, level, minor = match.groups()
    rank = {None: 0, "beta": 1, "alpha": 2}[level]
    return (rank, -int(major), -int(minor or 0), version)


# -- reading CRDs ------------------------------------------------------------------------------


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CRDError(where, "Required value: must be an object")
    return value


def _string(
    container: dict[str, Any], key: str, where: str, *, pattern: re.Pattern[str] | None = None
) -> str:
    value = container.get(key)
    if value is None or value == "":
        raise CRDError(f"{where}.{key}", "Required value")
    if not isinstance(value, str):
        raise CRDError(f"{where}.{key}", f"Invalid value: {render(value)}: must be a string")
    if pattern is not None and pattern.match(value) is None:
        raise CRDError(
            f"{where}.{key}", f"Invalid value: {render(value)}: must match {pattern.pattern}"
        )
    return value


def _names(
    container: dict[str, Any], key: str, where: str, pattern: re.Pattern[str]
) -> tuple[str, ...]:
    value = container.get(key, [])
    if not isinstance(value, list):
        raise CRDError(f"{where}.{key}", "Invalid value: must be a list of strings")
    for index, item in enumerate(value):
        if not isinstance(item, str) or pattern.match(item) is None:
            raise CRDError(
                f"{where}.{key}[{index}]",
                f"Invalid value: {render(item)}: must match {pattern.pattern}",
            )
    return tuple(value)


def _bool(container: dict[str, Any], key: str, where: str) -> bool:
    value = container.get(key)
    if not isinstance(value, bool):
        raise CRDError(f"{where}.{key}", "Required value: must be true or false")
    return value


def _printer_columns(version: dict[str, Any], where: str) -> tuple[PrinterColumn, ...]:
    raw = version.get("additionalPrinterColumns")
    if raw is None:
        # Kubernetes shows an Age column for a CRD that declares none.
        return (_AGE_COLUMN,)
    if not isinstance(raw, list):
        raise CRDError(f"{where}.additionalPrinterColumns", "Invalid value: must be a list")
    columns = []
    for index, item in enumerate(raw):
        at = f"{where}.additionalPrinterColumns[{index}]"
        column = _mapping(item, at)
        column_type = _string(column, "type", at)
        if column_type not in _COLUMN_TYPES:
            supported = ", ".join(f'"{t}"' for t in _COLUMN_TYPES)
            raise CRDError(
                f"{at}.type", f'Unsupported value: "{column_type}": supported values: {supported}'
            )
        json_path = _string(column, "jsonPath", at)
        if not json_path.startswith("."):
            raise CRDError(f"{at}.jsonPath", f'Invalid value: "{json_path}": must start with "."')
        priority = column.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
            raise CRDError(f"{at}.priority", "Invalid value: must be a non-negative integer")
        for key in ("format", "description"):
            if not isinstance(column.get(key, ""), str):
                raise CRDError(f"{at}.{key}", "Invalid value: must be a string")
        columns.append(
            PrinterColumn(
                name=_string(column, "name", at),
                type=column_type,
                json_path=json_path,
                format=column.get("format", ""),
                description=column.get("description", ""),
                priority=priority,
            )
        )
    return tuple(columns)


def _resource_schema(version: dict[str, Any], where: str) -> tuple[dict[str, Any], CompiledSchema]:
    holder = _mapping(version.get("schema"), f"{where}.schema")
    where = f"{where}.schema.openAPIV3Schema"
    schema = copy.deepcopy(_mapping(holder.get("openAPIV3Schema"), where))
    if schema.get("type") != "object":
        raise CRDError(f"{where}.type", 'Required value: must be "object" at the root')
    # Every object has apiVersion, kind and metadata whatever the CRD wrote; metadata's own
    # fields are ObjectMeta's and are checked by the API server, not by the schema.
    properties = schema.setdefault("properties", {})
    if not isinstance(properties, dict):
        raise CRDError(f"{where}.properties", "Invalid value: must be a map of schemas")
    properties.setdefault("apiVersion", {"type": "string"})
    properties.setdefault("kind", {"type": "string"})
    metadata = properties.setdefault("metadata", {"type": "object"})
    if not isinstance(metadata, dict) or metadata.get("type", "object") != "object":
        raise CRDError(f"{where}.properties[metadata].type", 'Invalid value: must be "object"')
    metadata["type"] = "object"
    return schema, compile_schema(schema, where=where)


def types_from_crd(crd: dict[str, Any], *, builtin: bool = False) -> list[ResourceType]:
    """The resource types of a CustomResourceDefinition, one per served version.

    Raises `CRDError` naming the offending field when the definition is malformed.
    `builtin=True` admits the core group (`spec.group: ""`), for HyperMesh's packaged kinds.
    """
    crd = _mapping(crd, "")
    for key, expected in (
        ("apiVersion", "apiextensions.k8s.io/v1"),
        ("kind", "CustomResourceDefinition"),
    ):
        if crd.get(key) != expected:
            raise CRDError(
                key, f'Unsupported value: {render(crd.get(key))}: supported values: "{expected}"'
            )
    metadata = _mapping(crd.get("metadata"), "metadata")
    spec = _mapping(crd.get("spec"), "spec")

    group = spec.get("group")
    if group == "" and builtin:
        pass
    else:
        group = _string(spec, "group", "spec", pattern=_DNS1123_SUBDOMAIN)
        if "." not in group:
            raise CRDError(
                "spec.group", f'Invalid value: "{group}": should be a domain with at least one dot'
            )

    names = _mapping(spec.get("names"), "spec.names")
    plural = _string(names, "plural", "spec.names", pattern=_DNS1035_LABEL)
    kind = _string(names, "kind", "spec.names", pattern=_KIND)
    singular = names.get("singular") or kind.lower()
    if not isinstance(singular, str) or _DNS1035_LABEL.match(singular) is None:
        raise CRDError(
            "spec.names.singular",
            f"Invalid value: {render(singular)}: must match {_DNS1035_LABEL.pattern}",
        )
    list_kind = names.get("listKind") or f"{kind}List"
    if not isinstance(list_kind, str) or _KIND.match(list_kind) is None:
        raise CRDError(
            "spec.names.listKind", f"Invalid value: {render(list_kind)}: must match {_KIND.pattern}"
        )
    short_names = _names(names, "shortNames", "spec.names", _DNS1035_LABEL)
    categories = _names(names, "categories", "spec.names", _DNS1035_LABEL)

    expected_name = f"{plural}.{group}" if group else plural
    if metadata.get("name") != expected_name:
        raise CRDError(
            "metadata.name",
            f"Invalid value: {render(metadata.get('name'))}: "
            f'must be spec.names.plural+"."+spec.group ("{expected_name}")',
        )

    scope = spec.get("scope")
    if scope not in ("Namespaced", "Cluster"):
        raise CRDError(
            "spec.scope",
            f'Unsupported value: {render(scope)}: supported values: "Namespaced", "Cluster"',
        )

    versions = spec.get("versions")
    if not isinstance(versions, list) or not versions:
        raise CRDError("spec.versions", "Required value: must have at least one version")
    seen: set[str] = set()
    storage_versions = []
    types = []
    for index, raw in enumerate(versions):
        where = f"spec.versions[{index}]"
        version = _mapping(raw, where)
        name = _string(version, "name", where, pattern=_DNS1035_LABEL)
        if name in seen:
            raise CRDError(f"{where}.name", f'Duplicate value: "{name}"')
        seen.add(name)
        served = _bool(version, "served", where)
        storage = _bool(version, "storage", where)
        if storage:
            storage_versions.append(name)
        schema, validator = _resource_schema(version, where)
        subresources = version.get("subresources") or {}
        if not isinstance(subresources, dict):
            raise CRDError(f"{where}.subresources", "Invalid value: must be an object")
        if served:
            types.append(
                ResourceType(
                    group=group,
                    version=name,
                    kind=kind,
                    plural=plural,
                    singular=singular,
                    list_kind=list_kind,
                    namespaced=scope == "Namespaced",
                    short_names=short_names,
                    categories=categories,
                    schema=schema,
                    printer_columns=_printer_columns(version, where),
                    has_status=isinstance(subresources.get("status"), dict),
                    served=served,
                    storage=storage,
                    _validator=validator,
                )
            )
    if len(storage_versions) != 1:
        raise CRDError(
            "spec.versions",
            "Invalid value: must have exactly one version marked as storage version, "
            f"found {storage_versions}",
        )
    return types


def load_crd_file(path: Path, *, builtin: bool = False) -> list[ResourceType]:
    """The resource types of every CRD document in a YAML file; errors name the file."""
    with path.open(encoding="utf-8") as stream:
        documents = [doc for doc in yaml.safe_load_all(stream) if doc is not None]
    types = []
    for document in documents:
        try:
            types.extend(types_from_crd(document, builtin=builtin))
        except CRDError as error:
            raise CRDError(f"{path.name}: {error.field}", error.detail) from None
    return types


@functools.cache
def _load_builtin_types() -> tuple[ResourceType, ...]:
    types: list[ResourceType] = []
    for path in sorted(BUILTIN_DIR.glob("*.yaml")):
        types.extend(load_crd_file(path, builtin=True))
    for path in sorted(CRD_DIR.glob("*.yaml")):
        types.extend(load_crd_file(path))
    return tuple(types)


def builtin_types() -> list[ResourceType]:
    """The types HyperMesh always serves: the packaged built-ins plus the hypermesh.io CRDs.

    Read and compiled once per process; the types are immutable, so sharing them is safe.
    """
    return list(_load_builtin_types())


# -- the registry -----------------------------------------------------------------------------


class Registry:
    """An index of served resource types, by plural, kind and short name."""

    def __init__(self, types: Iterable[ResourceType] = ()) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        # Bumped on every change; discovery and OpenAPI documents are cached per generation.
        self.generation = 0
        for resource_type in types:
            self.add(resource_type)

    @classmethod
    def with_builtins(cls) -> Registry:
        """A registry holding `builtin_types()`."""
        return cls(builtin_types())

    def add(self, resource_type: ResourceType) -> None:
        """Adds a type, replacing the same group/version/plural if present."""
        key = (resource_type.group, resource_type.version, resource_type.plural)
        self._types[key] = resource_type
        self.generation += 1

    def remove(self, group: str, plural: str) -> list[ResourceType]:
        """Removes every version of a resource; returns what was removed."""
        removed = [t for key, t in self._types.items() if key[0] == group and key[2] == plural]
        for resource_type in removed:
            del self._types[(group, resource_type.version, plural)]
        if removed:
            self.generation += 1
        return removed

    def by_plural(self, group: str, version: str, plural: str) -> ResourceType | None:
        """The type served at /apis/{group}/{version}/{plural}, if any."""
        return self._types.get((group, version, plural))

    def by_kind(self, group: str, version: str, kind: str) -> ResourceType | None:
        """The type of an apiVersion and kind, as an object's body names them."""
        for (g, v, _), resource_type in self._types.items():
            if g == group and v == version and resource_type.kind == kind:
                return resource_type
        return None

    def by_short_name(self, short_name: str) -> list[ResourceType]:
        """Preferred versions of the types carrying a short name, in resolution order."""
        return [t for t in self._preferred() if short_name in t.short_names]

    def resolve_all(self, name: str) -> list[ResourceType]:
        """Every type a user-typed name can mean, best first (see `resolve`)."""
        group: str | None = None
        wanted = name
        if "." in name:
            # kubectl's "workloads.hypermesh.io" (and "workloads.v1.hypermesh.io") forms.
            wanted, _, group = name.partition(".")
            head, _, rest = group.partition(".")
            if rest and any(t.group == rest and t.version == head for t in self._types.values()):
                group = rest
        lowered = wanted.lower()
        candidates = [t for t in self._preferred() if group is None or t.group == group]
        matchers = (
            lambda t: t.plural == lowered,
            lambda t: t.singular == lowered,
            lambda t: lowered in t.short_names,
            lambda t: t.kind.lower() == lowered,
        )
        found: list[ResourceType] = []
        for matches in matchers:
            found.extend(t for t in candidates if matches(t) and t not in found)
        return found

    def resolve(self, name: str) -> ResourceType | None:
        """The type a user means by a plural, singular, short name, kind, or `plural.group`.

        Exact plurals win over singulars, singulars over short names, short names over kinds;
        among groups, core comes first, then hypermesh.io, then the rest alphabetically. The
        type's preferred version is returned.
        """
        found = self.resolve_all(name)
        return found[0] if found else None

    def all(self) -> list[ResourceType]:
        """Every served type, grouped by group and preferred version first."""
        return sorted(self._types.values(), key=self._order)

    def groups(self) -> dict[str, list[str]]:
        """Group name -> its versions, preferred first (the shape of /apis discovery)."""
        result: dict[str, list[str]] = {}
        for resource_type in self.all():
            versions = result.setdefault(resource_type.group, [])
            if resource_type.version not in versions:
                versions.append(resource_type.version)
        return result

    def _preferred(self) -> list[ResourceType]:
        """One type per (group, plural): its preferred version."""
        best: dict[tuple[str, str], ResourceType] = {}
        for resource_type in self.all():
            best.setdefault((resource_type.group, resource_type.plural), resource_type)
        return list(best.values())

    @staticmethod
    def _order(resource_type: ResourceType) -> tuple[Any, ...]:
        return (
            _GROUP_PRIORITY.get(resource_type.group, 2),
            resource_type.group,
            version_priority(resource_type.version),
            resource_type.plural,
        )

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(self.all())

    def __len__(self) -> int:
        return len(self._types)
