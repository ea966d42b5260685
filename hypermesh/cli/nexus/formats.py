"""Machine output for `-o json|yaml|name|jsonpath=...|custom-columns=...`.

These formats print full objects, not the server's Table, so `get` asks for plain lists when one
of them is chosen. Several objects print the way kubectl prints them: one `List` for json and
yaml, one line each for name, a table for custom-columns. The jsonpath template language is
kubectl's: literal text, `{expression}`, `{range expression}...{end}` and `{"\\n"}` literals, with
the expression dialect of `hypermesh.api.jsonpath` (a pure module, cheap to import).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from hypermesh.api import jsonpath
from hypermesh.cli.nexus import tables

FormatKind = Literal["table", "wide", "json", "yaml", "name", "jsonpath", "custom-columns"]
ALLOWED = ("json", "yaml", "name", "wide", "jsonpath=...", "custom-columns=...")


class OutputError(ValueError):
    """An `-o` value or template nexus cannot use; the message says what is allowed."""


@dataclass(frozen=True)
class OutputSpec:
    """A parsed `-o` flag: which format, and its template for jsonpath and custom-columns."""

    kind: FormatKind = "table"
    template: str = ""

    @property
    def human(self) -> bool:
        """Whether this output is a server-rendered table."""
        return self.kind in ("table", "wide")


def parse_output(value: str | None) -> OutputSpec:
    """`-o` as an OutputSpec; raises OutputError naming the allowed formats."""
    if not value:
        return OutputSpec()
    name, sep, template = value.partition("=")
    if name in ("json", "yaml", "name", "wide") and not sep:
        return OutputSpec(name)  # type: ignore[arg-type]
    if name in ("jsonpath", "custom-columns") and sep and template:
        if name == "custom-columns":
            parse_columns(template)
        else:
            parse_template(template)
        return OutputSpec(name, template)  # type: ignore[arg-type]
    raise OutputError(f'unable to match a printer suitable for the output format "{value}", allowed formats are: {",".join(ALLOWED)}')


def as_list(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several objects as the `v1 List` kubectl prints for json and yaml."""
    return {"apiVersion": "v1", "items": objs, "kind": "List", "metadata": {"resourceVersion": ""}}


def resource_name(obj: dict[str, Any]) -> str:
    """`workload.hypermesh.io/web`: kind lower-cased, dotted with the group, slash, name."""
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    kind = str(obj.get("kind", "")).lower()
    name = (obj.get("metadata") or {}).get("name", "")
    return f"{kind}.{group}/{name}" if group else f"{kind}/{name}"


def to_json(value: Any) -> str:
    """kubectl's `-o json`: four-space indent, sorted keys, trailing newline."""
    return json.dumps(value, indent=4, sort_keys=True, ensure_ascii=False) + "\n"


# --- jsonpath templates ---------------------------------------------------------------------

_BLOCK = re.compile(r"\{((?:[^{}\"']|\"(?:\\.|[^\"\\])*\"|'[^']*')*)\}")
Node = tuple[str, Any]


def _tokens(template: str) -> list[Node]:
    """Split a template into text, expression, range and end tokens."""
    out: list[Node] = []
    pos = 0
    for match in _BLOCK.finditer(template):
        if match.start() > pos:
            out.append(("text", template[pos:match.start()]))
        body = match.group(1).strip()
        if body.startswith(("\"", "'")) and body.endswith(body[0]) and len(body) >= 2:
            out.append(("text", json.loads(body, strict=False) if body[0] == "\"" else body[1:-1]))
        elif body.startswith("range "):
            out.append(("range", body[len("range "):].strip()))
        elif body == "end":
            out.append(("end", None))
        else:
            out.append(("expr", body))
        pos = match.end()
    if pos < len(template):
        out.append(("text", template[pos:]))
    return out


def parse_template(template: str) -> list[Node]:
    """A jsonpath template as a tree: `range` nodes hold their body; raises OutputError."""
    if "{" not in template:
        template = "{" + template + "}"
    stack: list[list[Node]] = [[]]
    for kind, arg in _tokens(template):
        if kind == "range":
            body: list[Node] = []
            stack[-1].append(("range", (arg, body)))
            stack.append(body)
        elif kind == "end":
            if len(stack) == 1:
                raise OutputError("error parsing jsonpath template: {end} without {range}")
            stack.pop()
        else:
            if kind == "expr":
                _check_expression(arg)
            stack[-1].append((kind, arg))
    if len(stack) != 1:
        raise OutputError("error parsing jsonpath template: {range} without {end}")
    return stack[0]


def _check_expression(expr: str) -> None:
    try:
        jsonpath.compile_path(expr)
    except jsonpath.JSONPathError as exc:
        raise OutputError(f"error parsing jsonpath {expr}: {exc}") from None


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return "" if value is None else str(value)


def _evaluate(nodes: list[Node], data: Any) -> str:
    out: list[str] = []
    for kind, arg in nodes:
        if kind == "text":
            out.append(arg)
        elif kind == "expr":
            expr = arg if arg not in ("@", "$", ".") else ""
            values = jsonpath.find(data, expr) if expr else [data]
            out.append(" ".join(_text(v) for v in values))
        else:
            expr, body = arg
            for item in jsonpath.find(data, expr):
                out.append(_evaluate(body, item))
    return "".join(out)


def render_jsonpath(template: str, data: Any) -> str:
    """Apply a kubectl jsonpath template to `data`."""
    return _evaluate(parse_template(template), data)


# --- custom columns -------------------------------------------------------------------------


def parse_columns(spec: str) -> list[tuple[str, str]]:
    """`NAME:.metadata.name,IMAGE:.spec...` as (header, expression) pairs; raises OutputError."""
    columns: list[tuple[str, str]] = []
    for part in spec.split(","):
        header, sep, expr = part.partition(":")
        if not sep or not header or not expr:
            raise OutputError(f'custom-columns format specified but no custom columns given in "{part}": expected HEADER:.json.path')
        _check_expression(expr)
        columns.append((header, expr))
    return columns


def render_custom_columns(spec: str, objs: list[dict[str, Any]], *, no_headers: bool = False) -> str:
    """A table with one row per object and one column per HEADER:expression."""
    columns = parse_columns(spec)
    rows: list[list[str]] = []
    for obj in objs:
        row: list[str] = []
        for _, expr in columns:
            values = jsonpath.find(obj, expr)
            row.append(",".join(_text(v) for v in values) if values else tables.NONE)
        rows.append(row)
    return tables.render_rows([header for header, _ in columns], rows, no_headers=no_headers)


# --- everything together --------------------------------------------------------------------


def render_objects(spec: OutputSpec, objs: list[dict[str, Any]], *, single: bool, no_headers: bool = False) -> str:
    """Objects in a machine format; `single` means one object was asked for by name."""
    if spec.kind == "name":
        return "".join(resource_name(obj) + "\n" for obj in objs)
    if spec.kind == "custom-columns":
        return render_custom_columns(spec.template, objs, no_headers=no_headers)
    data: Any = objs[0] if single and len(objs) == 1 else as_list(objs)
    if spec.kind == "json":
        return to_json(data)
    if spec.kind == "yaml":
        from hypermesh.cli.nexus import yamlio

        return yamlio.dump_yaml(data)
    if spec.kind == "jsonpath":
        return render_jsonpath(spec.template, data)
    raise OutputError(f"output format {spec.kind} needs a table")
