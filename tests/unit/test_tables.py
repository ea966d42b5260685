"""Printer columns: the JSONPath dialect and human ages."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hypermesh.api import jsonpath, tables
from hypermesh.resources.registry import Registry

OBJ = {
    "metadata": {"name": "web", "creationTimestamp": "2026-11-27T00:00:00Z"},
    "spec": {"replicas": 3, "containers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "nginx"}]},
    "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "Progressing", "status": "False"}]},
}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (".spec.replicas", [3]),
        ("{.spec.replicas}", [3]),
        (".spec.containers[*].image", ["busybox", "nginx"]),
        (".spec.containers[-1].name", ["b"]),
        ('.status.conditions[?(@.type=="Ready")].status', ["True"]),
        (".status.conditions[?(@.type!='Ready')].type", ["Progressing"]),
        (".spec.missing", []),
        (".spec.replicas.deeper", []),
    ],
)
def test_jsonpath(expr: str, expected: list) -> None:
    assert jsonpath.find(OBJ, expr) == expected


def test_jsonpath_rejects_what_it_does_not_support() -> None:
    with pytest.raises(jsonpath.JSONPathError):
        jsonpath.compile_path(".spec..replicas")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-5, "<invalid>"), (0, "0s"), (119, "119s"), (150, "2m30s"), (600, "10m"), (3 * 3600 + 300, "3h5m"), (30 * 3600, "30h"), (50 * 3600, "2d2h"), (400 * 86400, "400d"), (3 * 365 * 86400 + 86400 * 10, "3y10d"), (9 * 365 * 86400, "9y")],
)
def test_human_duration(seconds: int, text: str) -> None:
    assert tables.human_duration(seconds) == text


def test_table_rows_follow_printer_columns() -> None:
    rtype = Registry.with_builtins().by_plural("hypermesh.io", "v1", "workloads")
    assert rtype is not None
    obj = {**OBJ, "status": {"readyReplicas": 2}}
    table = tables.table(rtype, [obj], resource_version="7")
    names = [c["name"] for c in table["columnDefinitions"]]
    assert names[0] == "Name" and "Age" in names
    row = table["rows"][0]
    assert row["cells"][0] == "web" and row["cells"][names.index("Replicas")] == 3
    assert row["object"]["metadata"]["name"] == "web"
    age = tables.human_age("2026-11-27T00:00:00Z", now=datetime(2026, 11, 27, 1, 0, tzinfo=UTC))
    assert age == "60m"
