"""`meta.k8s.io/v1` Table responses: what `kubectl get` prints.

kubectl asks for a Table and prints whatever cells the server sends, so a kind's printer
columns (a CRD's `additionalPrinterColumns`) decide what users see. Date columns are turned
into ages ("5m", "3h") here, on the server, in the same steps Kubernetes uses.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

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


def human_age(timestamp: Any, now: datetime | None = None) -> str:
    """Time since an RFC 3339 timestamp, rounded the way kubectl shows ages."""
    if not isinstance(timestamp, str) or not timestamp:
        return "<unknown>"
    try:
        then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return human_duration(((now or datetime.now(UTC)) - then).total_seconds())


def human_duration(seconds_f: float) -> str:
    """`95s`, `7m30s`, `4h5m`, `3d2h`, `2y10d`: precise when short, coarse when long."""
    seconds = int(seconds_f)
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        rest = hours % 24
        return f"{days}d{rest}h" if rest else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years, rest_days = days // 365, days % 365
    if days < 365 * 8 and rest_days:
        return f"{years}y{rest_days}d"
    return f"{years}y"


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
