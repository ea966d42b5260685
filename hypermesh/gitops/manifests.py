"""Manifests read from a source, each remembering the file and line it came from.

A sync refuses a whole revision when any file in it is wrong, so the person who pushed it needs
to find the mistake from the GitSync's status alone: every error says `file:line: field:
problem`. Parsing keeps ruamel's round-trip nodes next to the plain objects, so an error the
server finds later (a schema violation at `spec.ports[0].port`) can still be traced back to the
line that holds that field (`Manifest.line_of`).

What is checked here, before the server sees anything: YAML syntax, that every document is a
mapping with `apiVersion`, `kind` and `metadata.name`, that the sync-wave annotation is an
integer, and that no object is declared twice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PRUNE_ANNOTATION",
    "WAVE_ANNOTATION",
    "InvalidSource",
    "Manifest",
    "ManifestError",
    "parse",
    "parse_field_path",
]

WAVE_ANNOTATION = "hypermesh.io/sync-wave"
PRUNE_ANNOTATION = "hypermesh.io/prune"
# How many errors a message lists before "and N more".
_SHOWN_ERRORS = 5


@dataclass(frozen=True)
class ManifestError:
    """One problem at one place: `deploy/web.yaml:12: Workload/web: spec.replicas: Invalid
    value: ...` (the object and the field when known)."""

    file: str
    line: int | None
    message: str
    field: str | None = None
    subject: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return ": ".join(part for part in (where, self.subject, self.field, self.message) if part)


class InvalidSource(Exception):
    """A revision that cannot be applied; `errors` says every place that is wrong."""

    def __init__(self, errors: list[ManifestError]) -> None:
        self.errors = errors
        shown = "; ".join(str(e) for e in errors[:_SHOWN_ERRORS])
        more = len(errors) - _SHOWN_ERRORS
        super().__init__(shown + (f"; and {more} more" if more > 0 else ""))


@dataclass(frozen=True)
class Manifest:
    """One object as the source declares it."""

    obj: dict[str, Any]
    file: str
    line: int
    node: Any = field(default=None, repr=False, compare=False)

    @property
    def api_version(self) -> str:
        return str(self.obj.get("apiVersion", ""))

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", ""))

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def namespace(self) -> str | None:
        value = self.obj["metadata"].get("namespace")
        return str(value) if value else None

    @property
    def annotations(self) -> dict[str, Any]:
        return dict(self.obj["metadata"].get("annotations") or {})

    @property
    def wave(self) -> int:
        """The sync wave (validated by `parse`)."""
        return int(self.annotations.get(WAVE_ANNOTATION, 0))

    @property
    def group(self) -> str:
        group, _, _ = self.api_version.rpartition("/")
        return group

    def describe(self) -> str:
        """`Secret/web` or `Secret/web (namespace prod)`, as messages name objects."""
        text = f"{self.kind}/{self.name}"
        return f"{text} (namespace {self.namespace})" if self.namespace else text

    def line_of(self, field_path: str | None) -> int:
        """The line of the deepest part of `field_path` this document has (its first line when
        the path is empty or not found at all)."""
        if not field_path or self.node is None:
            return self.line
        return _line_of(self.node, parse_field_path(field_path)) or self.line

    def error(
        self, message: str, field_path: str | None = None, *, named: bool = False
    ) -> ManifestError:
        """An error about this object (and one of its fields), located in its file; `named`
        puts the object's kind and name in the message."""
        subject = self.describe() if named else None
        return ManifestError(self.file, self.line_of(field_path), message, field_path, subject)


def parse(files: Mapping[str, bytes]) -> list[Manifest]:
    """Every object in `files` (path -> content), in path order; InvalidSource lists every
    problem found in every file."""
    manifests: list[Manifest] = []
    errors: list[ManifestError] = []
    for name in sorted(files):
        try:
            text = files[name].decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append(ManifestError(name, None, f"not UTF-8 text (byte {exc.start})"))
            continue
        found, problems = _parse_file(name, text)
        manifests.extend(found)
        errors.extend(problems)
    errors.extend(_duplicates(manifests))
    if errors:
        raise InvalidSource(errors)
    return manifests


def _parse_file(name: str, text: str) -> tuple[list[Manifest], list[ManifestError]]:
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    yaml = YAML(typ="rt")
    try:
        raw_docs = list(yaml.load_all(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "invalid YAML"
        column = f" (column {mark.column + 1})" if mark is not None else ""
        return [], [ManifestError(name, line, f"invalid YAML: {problem}{column}")]
    except YAMLError as exc:
        return [], [ManifestError(name, None, f"invalid YAML: {exc}")]
    found: list[Manifest] = []
    errors: list[ManifestError] = []
    for raw in raw_docs:
        if raw is None:
            continue
        line = _node_line(raw) or 1
        if not isinstance(raw, dict):
            errors.append(
                ManifestError(name, line, f"a document must be a mapping, not {type(raw).__name__}")
            )
            continue
        obj = _plain(raw)
        if str(obj.get("kind", "")).endswith("List") and isinstance(obj.get("items"), list):
            items: Any = raw.get("items")
            for index, item in enumerate(obj["items"]):
                node = items[index]
                item_line = _item_line(items, index) or line
                if not isinstance(item, dict):
                    errors.append(ManifestError(name, item_line, "a List item must be a mapping"))
                    continue
                checked = _check(Manifest(item, name, item_line, node))
                errors.extend(checked[1])
                found.extend(checked[0])
            continue
        manifest, problems = _check(Manifest(obj, name, line, raw))
        errors.extend(problems)
        found.extend(manifest)
    return found, errors


def _check(manifest: Manifest) -> tuple[list[Manifest], list[ManifestError]]:
    """The manifest if its envelope is sound, else what is wrong with it."""
    obj = manifest.obj
    errors: list[ManifestError] = []
    for key in ("apiVersion", "kind"):
        if not isinstance(obj.get(key), str) or not obj.get(key):
            errors.append(manifest.error("Required value: must be a non-empty string", key))
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        errors.append(manifest.error("Required value: must be a mapping", "metadata"))
        return [], errors
    if not isinstance(meta.get("name"), str) or not meta.get("name"):
        errors.append(manifest.error("Required value: must be a non-empty string", "metadata.name"))
    namespace = meta.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        errors.append(manifest.error("Invalid value: must be a string", "metadata.namespace"))
    annotations = meta.get("annotations")
    if annotations is not None and not isinstance(annotations, dict):
        errors.append(manifest.error("Invalid value: must be a mapping", "metadata.annotations"))
    elif annotations and WAVE_ANNOTATION in annotations:
        value = annotations[WAVE_ANNOTATION]
        if isinstance(value, bool) or not re.fullmatch(r"-?[0-9]+", str(value).strip()):
            errors.append(
                manifest.error(
                    f'Invalid value: "{value}": the sync wave must be an integer',
                    f"metadata.annotations[{WAVE_ANNOTATION}]",
                )
            )
    return ([] if errors else [manifest]), errors


def _duplicates(manifests: list[Manifest]) -> list[ManifestError]:
    first: dict[tuple[str, str, str | None, str], Manifest] = {}
    errors: list[ManifestError] = []
    for manifest in manifests:
        key = (manifest.group, manifest.kind, manifest.namespace, manifest.name)
        earlier = first.setdefault(key, manifest)
        if earlier is not manifest:
            errors.append(
                manifest.error(
                    f"{manifest.describe()} is declared twice (also at {earlier.file}:{earlier.line})",
                )
            )
    return errors


# Field paths and lines


def parse_field_path(path: str) -> list[str | int]:
    """`spec.ports[0].port` -> ["spec", "ports", 0, "port"]; `metadata.labels[a.b/c]` keeps
    the bracketed key whole."""
    parts: list[str | int] = []
    for match in re.finditer(r"\[([^\]]*)\]|([^.\[\]]+)", path):
        bracketed, plain = match.group(1), match.group(2)
        if bracketed is not None:
            key = bracketed.strip("\"'")
            parts.append(int(key) if key.isdigit() else key)
        elif plain:
            parts.append(plain)
    return parts


def _line_of(node: Any, parts: list[str | int]) -> int | None:
    """The 1-based line of the deepest node along `parts` (keys may contain dots, so a key is
    also tried as the join of the next parts)."""
    line: int | None = None
    index = 0
    while index < len(parts):
        part = parts[index]
        if isinstance(node, list) and isinstance(part, int):
            if part >= len(node):
                break
            line = _item_line(node, part) or line
            node = node[part]
            index += 1
            continue
        if not isinstance(node, dict):
            break
        matched = False
        for end in range(len(parts), index, -1):
            key = ".".join(str(p) for p in parts[index:end])
            if key in node:
                line = _key_line(node, key) or line
                node = node[key]
                index = end
                matched = True
                break
        if not matched:
            break
    return line


def _node_line(node: Any) -> int | None:
    lc = getattr(node, "lc", None)
    return int(lc.line) + 1 if lc is not None and lc.line is not None else None


def _key_line(node: Any, key: str) -> int | None:
    lc = getattr(node, "lc", None)
    try:
        return int(lc.key(key)[0]) + 1 if lc is not None else None
    except (KeyError, TypeError, AttributeError):
        return None


def _item_line(node: Any, index: int) -> int | None:
    lc = getattr(node, "lc", None)
    try:
        return int(lc.item(index)[0]) + 1 if lc is not None else None
    except (KeyError, TypeError, AttributeError, IndexError):
        return None


def _plain(value: Any) -> Any:
    """ruamel's commented containers as plain dicts and lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value
