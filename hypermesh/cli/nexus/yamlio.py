"""Reading manifests and writing YAML, both through ruamel.yaml.

Manifests are multi-document YAML or JSON (JSON is YAML, so one loader serves both), and a
person who wrote one needs to know where it is wrong: errors name the file and the line.
Output copies kubectl's `-o yaml`: block style, keys sorted, sequences not indented under their
key, multi-line strings as literal blocks. ruamel is imported when a function runs, never at
import time, so commands that print no YAML do not pay for it.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any


class ManifestError(ValueError):
    """A manifest that cannot be read: names the source and, when known, the line."""


@dataclass(frozen=True)
class Document:
    """One object from a manifest and where it came from (for messages)."""

    obj: dict[str, Any]
    source: str
    line: int


def _plain(value: Any) -> Any:
    """ruamel's commented containers as plain dicts and lists (they serialise as JSON cleanly)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def load_documents(text: str, source: str) -> list[Document]:
    """Every non-empty document in `text`; a `List` document is expanded into its items."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    yaml = YAML(typ="rt")
    docs: list[Document] = []
    try:
        for raw in yaml.load_all(text):
            if raw is None:
                continue
            line = 1
            lc = getattr(raw, "lc", None)
            if lc is not None:
                line = int(lc.line) + 1
            if not isinstance(raw, dict):
                raise ManifestError(f"error parsing {source} (line {line}): a document must be a mapping, not {type(raw).__name__}")
            obj = _plain(raw)
            if obj.get("kind", "").endswith("List") and isinstance(obj.get("items"), list):
                docs.extend(Document(item, source, line) for item in obj["items"] if isinstance(item, dict))
                continue
            docs.append(Document(obj, source, line))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ManifestError(f"error parsing {source}{where}: {problem}") from None
    except YAMLError as exc:
        raise ManifestError(f"error parsing {source}: {exc}") from None
    for doc in docs:
        missing = [key for key in ("apiVersion", "kind") if not doc.obj.get(key)]
        if missing:
            raise ManifestError(f"error validating {doc.source} (line {doc.line}): {' and '.join(missing)} not set")
        if not isinstance(doc.obj.get("metadata"), dict) or not doc.obj["metadata"].get("name"):
            raise ManifestError(f"error validating {doc.source} (line {doc.line}): metadata.name not set")
    return docs


# Strings a YAML reader would take for a number, boolean or null: kubectl (go-yaml) quotes them
# with double quotes, ruamel would pick single quotes.
_AMBIGUOUS = re.compile(
    r"^(?:[-+]?(?:\d[\d_]*)?\.?\d*(?:[eE][-+]?\d+)?|0x[0-9a-f_]+|0o?[0-7_]+|[-+]?\.(?:inf|nan)"
    r"|true|false|yes|no|on|off|y|n|null|~|\d{4}-\d\d?-\d\d?(?:[Tt ].*)?)$",
    re.IGNORECASE,
)


def _sorted(value: Any) -> Any:
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString, LiteralScalarString

    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    if isinstance(value, str) and "\n" in value:
        return LiteralScalarString(value)
    if isinstance(value, str) and _AMBIGUOUS.match(value):
        return DoubleQuotedScalarString(value)
    return value


def _represent_null(representer: Any, _: None) -> Any:
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


def dump_yaml(obj: Any) -> str:
    """`obj` as block-style YAML the way kubectl prints it."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt", pure=True)
    yaml.default_flow_style = False
    yaml.indent(mapping=2, sequence=2, offset=0)
    yaml.width = 1 << 20
    yaml.representer.add_representer(type(None), _represent_null)
    out = io.StringIO()
    yaml.dump(_sorted(obj), out)
    return out.getvalue()
