"""The pure parts of GitOps: manifests with their lines, drift paths, health, GitSync specs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controllers.gitsync import _duration, _parse_spec
from hypermesh.gitops import diff, health, manifests
from hypermesh.gitops.inventory import InventoryItem, Owner
from hypermesh.gitops.sync import scrub

SERVICE = """\
# a comment first
apiVersion: hypermesh.io/v1
kind: Service
metadata:
  name: web
  labels:
    app.kubernetes.io/name: web
  annotations:
    hypermesh.io/sync-wave: "2"
spec:
  selector: {app: web}
  ports:
  - name: http
    port: 80
  - name: admin
    port: eighty
"""


def parse_one(text: str, name: str = "deploy/web.yaml") -> manifests.Manifest:
    (found,) = manifests.parse({name: text.encode()})
    return found


def test_a_manifest_knows_its_file_line_wave_and_the_line_of_each_field() -> None:
    web = parse_one(SERVICE)
    assert (web.file, web.line, web.kind, web.name, web.wave) == ("deploy/web.yaml", 2, "Service", "web", 2)
    assert web.line_of("spec.ports[1].port") == 16
    assert web.line_of("spec.ports[1]") == 15
    assert web.line_of("metadata.labels[app.kubernetes.io/name]") == 7
    # A key with dots written without brackets, as some servers do.
    assert web.line_of("metadata.labels.app.kubernetes.io/name") == 7
    # A field the manifest does not have: the deepest part it does have.
    assert web.line_of("spec.ports[1].targetPort") == 15
    assert web.line_of("spec.nothing") == 10
    assert web.line_of(None) == 2
    error = web.error("Invalid value: \"eighty\": must be an integer", "spec.ports[1].port", named=True)
    assert str(error) == 'deploy/web.yaml:16: Service/web: spec.ports[1].port: Invalid value: "eighty": must be an integer'


def test_every_problem_of_every_file_is_reported_with_its_place() -> None:
    files = {
        "a.yaml": b"apiVersion: v1\nkind: Secret\nmetadata:\n  name: a\n   bad: [\n",
        "b.yaml": b"apiVersion: v1\nkind: Secret\nmetadata: {}\n---\n- just a list\n",
        "c.yaml": b"apiVersion: v1\nkind: Secret\nmetadata:\n  name: c\n  annotations:\n    hypermesh.io/sync-wave: soon\n",
        "d.json": b'{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "a"}}',
        "e.yaml": b"apiVersion: v1\nkind: Secret\nmetadata:\n  name: e\n  name: again\n",
        "f.yaml": b"\xff\xfe",
    }
    with pytest.raises(manifests.InvalidSource) as caught:
        manifests.parse(files)
    messages = [str(e) for e in caught.value.errors]
    assert messages[0].startswith("a.yaml:5: invalid YAML: ")
    assert "b.yaml:3: metadata.name: Required value: must be a non-empty string" in messages
    assert "b.yaml:5: a document must be a mapping, not CommentedSeq" in messages
    assert any(m.startswith("c.yaml:6: metadata.annotations[hypermesh.io/sync-wave]: Invalid value: \"soon\"") for m in messages)
    assert any(m.startswith("e.yaml:5: invalid YAML: found duplicate key \"name\"") for m in messages)
    assert "f.yaml: not UTF-8 text (byte 0)" in messages
    assert str(caught.value).endswith("and 1 more")

    with pytest.raises(manifests.InvalidSource) as twice:
        manifests.parse({"x.yaml": files["d.json"], "y.json": files["d.json"]})
    assert str(twice.value) == "y.json:1: Secret/a is declared twice (also at x.yaml:1)"


def test_lists_are_expanded_and_empty_documents_skipped() -> None:
    text = (
        "---\n# nothing\n---\napiVersion: v1\nkind: List\nitems:\n"
        "- {apiVersion: v1, kind: Secret, metadata: {name: one}}\n"
        "- apiVersion: v1\n  kind: Secret\n  metadata: {name: two, namespace: ns}\n"
    )
    one, two = manifests.parse({"l.yaml": text.encode()})
    assert (one.name, one.line, two.name, two.line, two.namespace) == ("one", 7, "two", 8, "ns")
    assert two.describe() == "Secret/two (namespace ns)"


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("spec.ports[0].port", ["spec", "ports", 0, "port"]),
        ("metadata.labels[a.b/c]", ["metadata", "labels", "a.b/c"]),
        ('metadata.annotations["x.io/y"]', ["metadata", "annotations", "x.io/y"]),
        ("", []),
    ],
)
def test_field_paths(path: str, parts: list[object]) -> None:
    assert manifests.parse_field_path(path) == parts


# -- drift ------------------------------------------------------------------------------------


def test_changed_paths_name_fields_never_values() -> None:
    live = {
        "metadata": {"name": "x", "resourceVersion": "9", "labels": {"app.kubernetes.io/name": "a"}, "managedFields": [1]},
        "data": {"password": "aGFuZA=="},
        "spec": {"ports": [{"port": 80, "targetPort": 9090}], "list": [1, 2]},
        "status": {"phase": "x"},
    }
    wanted = {
        "metadata": {"name": "x", "resourceVersion": "10", "labels": {"app.kubernetes.io/name": "b"}},
        "data": {"password": "Z2l0"},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}], "list": [1, 2, 3]},
    }
    paths = diff.changed_paths(diff.comparable(live), diff.comparable(wanted))
    assert paths == ["data.password", "metadata.labels[app.kubernetes.io/name]", "spec.list", "spec.ports[0].targetPort"]
    assert diff.format_paths(paths, limit=2) == "data.password, metadata.labels[app.kubernetes.io/name] and 2 more"
    assert diff.changed_paths(diff.comparable(live), diff.comparable(live)) == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=12,
)


@given(json_values, json_values)
def test_no_paths_exactly_when_equal(a: object, b: object) -> None:
    assert (diff.changed_paths(a, b) == []) == (a == b)


def test_digest_is_stable_under_key_order() -> None:
    assert diff.digest({"a": 1, "b": {"c": 2, "d": 3}}) == diff.digest({"b": {"d": 3, "c": 2}, "a": 1})
    assert diff.digest({"a": 1}) != diff.digest({"a": 2})


# -- health -----------------------------------------------------------------------------------


def workload(**status: object) -> dict[str, object]:
    return {"apiVersion": "hypermesh.io/v1", "kind": "Workload", "metadata": {"name": "w", "generation": 2}, "spec": {"replicas": 2}, "status": status}


def condition(type_: str, value: str, **extra: str) -> dict[str, str]:
    return {"type": type_, "status": value, **extra}


def test_health_follows_kstatus_for_the_kinds_hypermesh_serves() -> None:
    assert health.assess(None).message == "not found"
    assert not health.assess(workload()).ready
    assert "generation 2 not yet observed" in health.assess(workload(observedGeneration=1)).message
    assert health.assess(workload(observedGeneration=2, updatedReplicas=2, availableReplicas=1)).message == "1 of 2 replicas available"
    ready = workload(observedGeneration=2, updatedReplicas=2, availableReplicas=2, conditions=[condition("Available", "True")])
    assert health.assess(ready).ready
    stuck = workload(observedGeneration=2, conditions=[condition("Progressing", "False", reason="ProgressDeadlineExceeded", message="slow")])
    assert health.assess(stuck).state == "Failed"
    assert health.assess({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}).ready
    assert not health.assess({"apiVersion": "v1", "kind": "Namespace", "metadata": {}, "status": {"phase": "Terminating"}}).ready
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {}, "status": {}}
    assert health.assess(crd).message == "not yet established"
    cert = {"kind": "Certificate", "metadata": {}, "status": {"conditions": [condition("Ready", "False", message="issuing")]}}
    assert health.assess(cert).message == "Ready=False: issuing"
    stalled = {"kind": "GitSync", "metadata": {}, "status": {"conditions": [condition("Stalled", "True", message="bad yaml")]}}
    assert health.assess(stalled).state == "Failed"
    assert not health.assess({"kind": "Secret", "metadata": {"deletionTimestamp": "now"}}).ready


# -- ownership and specs ----------------------------------------------------------------------


def test_ownership_is_told_by_both_labels() -> None:
    owner = Owner("team", "apps")
    mine = {"metadata": {"labels": owner.labels}}
    same_name_elsewhere = {"metadata": {"labels": {**owner.labels, "gitsync.hypermesh.io/namespace": "other"}}}
    assert owner.owns(mine) and owner.other_owner(mine) is None
    assert not owner.owns(same_name_elsewhere)
    assert owner.other_owner(same_name_elsewhere) == "other/apps"
    assert owner.other_owner({"metadata": {}}) is None
    assert owner.manager == "gitsync/apps"
    item = InventoryItem.from_status({"apiVersion": "v1", "kind": "Secret", "name": "s", "namespace": "n", "digest": "d"})
    assert InventoryItem.from_status(item.to_status()) == item


def test_gitsync_specs_are_checked_before_anything_runs() -> None:
    spec = _parse_spec({"url": "/srv/r.git", "ref": {"branch": "main"}, "path": "./deploy", "interval": "1m30s"}, allow_local=True, minimum=30)
    assert (spec.interval, spec.timeout, spec.path, spec.transport) == (90.0, 90.0, "deploy", "local")
    assert _parse_spec({"url": "https://h/r", "interval": "1s"}, allow_local=True, minimum=30).timeout == 30.0
    assert _parse_spec({"url": "https://h/r", "timeout": "500ms"}, allow_local=True, minimum=30).timeout == 0.5
    assert _duration("1h2m3s", "interval") == 3723.0
    with pytest.raises(ValueError, match='spec.interval "soon" is not a duration'):
        _parse_spec({"url": "https://h/r", "interval": "soon"}, allow_local=True, minimum=30)
    with pytest.raises(ValueError, match="must be a full commit id"):
        _parse_spec({"url": "https://h/r", "ref": {"commit": "abc"}}, allow_local=True, minimum=30)
    with pytest.raises(ValueError, match="local repositories are not allowed"):
        _parse_spec({"url": "file:///srv/r"}, allow_local=False, minimum=30)


def test_a_secret_s_values_never_reach_a_message() -> None:
    obj = {"apiVersion": "v1", "kind": "Secret", "data": {"value": "hunter2!!", "n": 12345}, "stringData": {"v": ["s3cr3t"]}}
    messages = [
        'Invalid value: "hunter2!!": data[value] in body must be of type byte: "hunter2!!"',
        'Invalid value: 12345: data[n] in body must be of type string: "integer"',
        'Invalid value: ["s3cr3t"]: stringData[v] in body must be of type string: "array"',
    ]
    scrubbed = [scrub(obj, m) for m in messages]
    assert scrubbed == [
        "Invalid value: [redacted]: data[value] in body must be of type byte: [redacted]",
        'Invalid value: [redacted]: data[n] in body must be of type string: "integer"',
        'Invalid value: [redacted]: stringData[v] in body must be of type string: "array"',
    ]
    # Other kinds keep the server's words whole.
    assert scrub({**obj, "kind": "Service", "apiVersion": "hypermesh.io/v1"}, messages[0]) == messages[0]
