"""nexus output: aligned tables, machine formats and manifest reading, checked against golden files.

Set UPDATE_GOLDEN=1 to rewrite the golden files after an intended change, then read the diff.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hypermesh import ages
from hypermesh.cli.nexus import formats, tables, yamlio

GOLDEN = Path(__file__).parent / "golden" / "nexus"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs from its golden file"


def workload(name: str, ns: str, replicas: int, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "hypermesh.io/v1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "uid": f"uid-{name}", "resourceVersion": "42"},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{"name": "web", "image": "busybox", "command": ["httpd", "-f"]}]}},
        },
        "status": {"readyReplicas": replicas, "conditions": [{"type": "Ready", "status": "True", "message": "all\nready"}]},
    }


TABLE: dict[str, Any] = {
    "kind": "Table",
    "apiVersion": "meta.k8s.io/v1",
    "columnDefinitions": [
        {"name": "Name", "type": "string", "priority": 0},
        {"name": "Replicas", "type": "integer", "priority": 0},
        {"name": "Ready", "type": "integer", "priority": 0},
        {"name": "Up-to-date", "type": "integer", "priority": 0},
        {"name": "Age", "type": "date", "priority": 0},
        {"name": "Images", "type": "string", "priority": 1},
    ],
    "rows": [
        {"cells": ["web", 3, 3, 3, "5m", "busybox"], "object": {"metadata": {"name": "web", "namespace": "default", "labels": {"tier": "front", "app": "web"}}}},
        {"cells": ["a-much-longer-name", 10, None, 1, "3h", "nginx,busybox"], "object": {"metadata": {"name": "a-much-longer-name", "namespace": "prod"}}},
    ],
}


def test_table_golden() -> None:
    check_golden("table.txt", tables.render(TABLE, tables.TableOptions()))


def test_wide_table_golden() -> None:
    opts = tables.TableOptions(wide=True, show_namespace=True, show_labels=True)
    check_golden("table_wide.txt", tables.render(TABLE, opts))


def test_table_alignment_rules() -> None:
    text = tables.render(TABLE, tables.TableOptions())
    lines = text.splitlines()
    assert lines[0].startswith("NAME   ") and "UP-TO-DATE" in lines[0]
    assert "IMAGES" not in lines[0]
    # Every column starts at the same offset on every line, and no line has trailing spaces.
    start = lines[0].index("REPLICAS")
    assert all(line[start - 1] == " " and line[start] != " " for line in lines)
    assert all(line == line.rstrip() for line in lines)
    # A missing cell prints empty, as kubectl prints it.
    assert lines[2].split() == ["a-much-longer-name", "10", "1", "3h"]


def test_no_headers_and_empty() -> None:
    text = tables.render(TABLE, tables.TableOptions(no_headers=True))
    assert text.splitlines()[0].startswith("web ")
    assert tables.render({**TABLE, "rows": []}, tables.TableOptions()) == ""


def test_colour_only_when_asked_and_alignment_kept() -> None:
    table = {
        "columnDefinitions": [{"name": "Name"}, {"name": "Status"}, {"name": "Age"}],
        "rows": [{"cells": ["a", "Running", "1m"]}, {"cells": ["bb", "Failed", "2m"]}],
    }
    plain = tables.render(table, tables.TableOptions())
    assert "\x1b[" not in plain
    coloured = tables.render(table, tables.TableOptions(color=True))
    assert "\x1b[32mRunning\x1b[0m" in coloured and "\x1b[31mFailed\x1b[0m" in coloured
    strip = coloured.replace("\x1b[32m", "").replace("\x1b[31m", "").replace("\x1b[0m", "")
    assert strip == plain


def test_streaming_rows_keep_header_widths() -> None:
    printer = tables.TablePrinter(tables.TableOptions())
    first = printer.add({**TABLE, "rows": TABLE["rows"][1:]})
    second = printer.add({**TABLE, "rows": TABLE["rows"][:1]})
    assert first.startswith("NAME")
    assert not second.startswith("NAME")
    assert first.splitlines()[0].index("REPLICAS") == second.index("3")


def test_yaml_golden() -> None:
    text = formats.render_objects(formats.parse_output("yaml"), [workload("web", "default", 3, {"app": "web"})], single=True)
    check_golden("workload.yaml", text)
    several = formats.render_objects(formats.parse_output("yaml"), [workload("a", "x", 1, {}), workload("b", "x", 2, {})], single=False)
    assert several.startswith("apiVersion: v1\nitems:\n- apiVersion: hypermesh.io/v1\n")
    assert "kind: List" in several


def test_custom_columns_golden() -> None:
    objs = [workload("web", "default", 3, {"app": "web"}), workload("api", "prod", 12, {})]
    spec = formats.parse_output("custom-columns=NAME:.metadata.name,REPLICAS:.spec.replicas,IMAGES:.spec.template.spec.containers[*].image,MISSING:.status.nothing")
    check_golden("custom_columns.txt", formats.render_objects(spec, objs, single=False))


def test_json_name_and_jsonpath() -> None:
    obj = workload("web", "default", 3, {})
    data = json.loads(formats.render_objects(formats.parse_output("json"), [obj], single=True))
    assert data == obj
    assert formats.render_objects(formats.parse_output("name"), [obj], single=True) == "workload.hypermesh.io/web\n"
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "prod"}}
    assert formats.resource_name(ns) == "namespace/prod"
    two = [obj, workload("api", "default", 1, {})]
    assert formats.render_objects(formats.parse_output("jsonpath={.items[*].metadata.name}"), two, single=False) == "web api"
    ranged = formats.parse_output('jsonpath={range .items[*]}{.metadata.name}={.spec.replicas}{"\\n"}{end}')
    assert formats.render_objects(ranged, two, single=False) == "web=3\napi=1\n"
    status = formats.parse_output('jsonpath={.status.conditions[?(@.type=="Ready")].status}')
    assert formats.render_objects(status, [obj], single=True) == "True"


@pytest.mark.parametrize("bad", ["xml", "jsonpath=", "custom-columns=NAME", "jsonpath={range .a}"])
def test_bad_output_formats(bad: str) -> None:
    with pytest.raises(formats.OutputError):
        formats.parse_output(bad)


def test_ages() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    stamp = (now - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    assert ages.age(stamp, now) == "5m"
    assert ages.human_duration(95) == "95s"
    assert ages.human_duration(3 * 3600 + 5 * 60) == "3h5m"
    assert ages.age(None) == "<unknown>"


def test_manifests_multi_document_and_lists() -> None:
    text = (
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n"
        '{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "b"}}]}\n'
        "---\n"
    )
    docs = yamlio.load_documents(text, "m.yaml")
    assert [d.obj["metadata"]["name"] for d in docs] == ["a", "b"]
    assert docs[0].line == 1 and docs[1].line == 5


def test_manifest_errors_name_file_and_line() -> None:
    with pytest.raises(yamlio.ManifestError, match=r"m\.yaml \(line 3, column \d+\)"):
        yamlio.load_documents("apiVersion: v1\nkind: X\nmetadata: {name: [a}\n", "m.yaml")
    with pytest.raises(yamlio.ManifestError, match=r"m\.yaml \(line 5\): kind not set"):
        yamlio.load_documents("apiVersion: v1\nkind: X\nmetadata: {name: a}\n---\napiVersion: v1\nmetadata: {name: b}\n", "m.yaml")


def test_conflict_message_names_owner_and_hint() -> None:
    from hypermesh.cli.nexus import errors

    class ApiError(Exception):
        reason = "Conflict"
        status_body = {
            "kind": "Status",
            "reason": "Conflict",
            "details": {"causes": [{"type": "FieldManagerConflict", "message": 'conflict with "kubectl"', "field": ".spec.replicas"}]},
        }

    text, code = errors.describe(ApiError('Apply failed with 1 conflict: conflict with "kubectl": .spec.replicas'))
    assert code == 1
    assert text.splitlines()[:3] == [
        'Error from server (Conflict): Apply failed with 1 conflict: conflict with "kubectl": .spec.replicas',
        "Apply conflicts with other field managers:",
        '  - .spec.replicas is owned by "kubectl"',
    ]
    assert "--force-conflicts" in text


def test_durations_and_wait_conditions() -> None:
    from hypermesh.cli.nexus import dispatch, waiting

    assert dispatch.parse_duration("60s") == 60 and dispatch.parse_duration("1m30s") == 90 and dispatch.parse_duration("2") == 2
    assert dispatch.parse_duration("500ms") == 0.5
    ready, is_delete = waiting.parse_condition("condition=Ready")
    assert not is_delete
    assert ready({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert not ready({"status": {"conditions": [{"type": "Ready", "status": "False"}]}})
    phase, _ = waiting.parse_condition("jsonpath={.status.phase}=Running")
    assert phase({"status": {"phase": "Running"}}) and not phase({"status": {"phase": "Pending"}})
    gone, is_delete = waiting.parse_condition("delete")
    assert is_delete and gone(None)
    with pytest.raises(waiting.CliError):
        waiting.parse_condition("sometime")


def test_help_and_client_version_run_without_a_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    from hypermesh.cli.nexus import dispatch

    assert dispatch.main(["version", "--client"]) == 0
    assert capsys.readouterr().out.startswith("Client Version: v")
    assert dispatch.main(["get"]) == 2
    assert dispatch.main([]) == 2
