"""`meta.k8s.io/v1` Table responses: what `kubectl get` prints.

kubectl asks for a Table and prints whatever cells the server sends, so a kind's printer
columns (a CRD's `additionalPrinterColumns`) decide what users see. Date columns are turned
into ages ("5m", "3h") here, on the server, in the same steps Kubernetes uses.
"""

from __future__ import annotations

from typing import Any

from hypermesh import ages
from hypermesh.ages import human_duration  # noqa: F401  (re-exported for callers)
from hypermesh.api.jsonpath import JSONPathError, find
from hypermesh.resources.registry import ResourceType

TABLE_CONTENT_TYPE = b"application/json;as=Table;v=v1;g=meta.k8s.io"


def wants_table(accept: str) -> bool:
    """kubectl's human output asks for `application/json;as=Table;v=v1;g=meta.k8s.io`."""
    return "as=Table" in accept


def column_definitions(rtype: ResourceType) -> list[dict[str, Any]]:
    columns = [{"name": "Name", "type": "string", "format": "name", "description": "Name of the object", "priority": 0}]
    names = {"name"}
    for col in rtype.printer_columns:
        columns.append(
            {
                "name": col.name,
                "type": col.type,
                "format": col.format or "",
                "description": col.description or "",
                "priority": col.priority,
            }
        )
        names.add(col.name.lower())
    if "age" not in names:
        columns.append({"name": "Age", "type": "date", "format": "", "description": "Time since creation", "priority": 0})
    return columns


human_age = ages.age


def _cell(obj: dict[str, Any], json_path: str, col_type: str) -> Any:
    try:
        values = find(obj, json_path)
    except JSONPathError:
        return None
    if not values:
        return None
    if len(values) > 1:
        return ",".join(str(v) for v in values)
    value = values[0]
    if col_type == "date":
        return human_age(value)
    if col_type in ("integer", "number") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        # A string map (a selector, labels) reads best the way selectors are written.
        return ",".join(f"{k}={v}" for k, v in sorted(value.items())) or "<none>"
    if isinstance(value, (dict, list)):
        import orjson

        return orjson.dumps(value).decode()
    return value if isinstance(value, str) else str(value)


def row(rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata", {})
    cells: list[Any] = [meta.get("name", "")]
    names = {"name"}
    for col in rtype.printer_columns:
        cells.append(_cell(obj, col.json_path, col.type))
        names.add(col.name.lower())
    if "age" not in names:
        cells.append(human_age(meta.get("creationTimestamp")))
    partial = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}
    return {"cells": cells, "object": partial}


def table(
    rtype: ResourceType,
    objs: list[dict[str, Any]],
    *,
    resource_version: str,
    continue_token: str | None = None,
    remaining: int | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"resourceVersion": resource_version}
    if continue_token:
        metadata["continue"] = continue_token
    if remaining is not None:
        metadata["remainingItemCount"] = remaining
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": column_definitions(rtype),
        "rows": [row(rtype, o) for o in objs],
    }
