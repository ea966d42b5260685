"""The official `kubernetes` Python client against a real server, plus raw HTTP edge cases."""

from __future__ import annotations

import time
from collections.abc import Iterator

import orjson
import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.e2e.conftest import Server, free_port

G, V = "hypermesh.io", "v1"


def workload(name: str, replicas: int = 1, **meta: object) -> dict:
    return {
        "apiVersion": "hypermesh.io/v1",
        "kind": "Workload",
        "metadata": {"name": name, **meta},
        "spec": {"replicas": replicas, "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }


@pytest.fixture
def custom(k8s: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(k8s)


def test_crud_and_conflict(custom: client.CustomObjectsApi, namespace: str) -> None:
    created = custom.create_namespaced_custom_object(G, V, namespace, "workloads", workload("a"))
    assert created["metadata"]["uid"] and created["metadata"]["generation"] == 1
    rv = created["metadata"]["resourceVersion"]
    got = custom.get_namespaced_custom_object(G, V, namespace, "workloads", "a")
    assert got["metadata"]["resourceVersion"] == rv
    got["spec"]["replicas"] = 2
    updated = custom.replace_namespaced_custom_object(G, V, namespace, "workloads", "a", got)
    assert int(updated["metadata"]["resourceVersion"]) > int(rv)
    assert updated["metadata"]["generation"] == 2
    # A write based on the stale version is refused with 409 Conflict.
    got["spec"]["replicas"] = 3
    with pytest.raises(ApiException) as exc:
        custom.replace_namespaced_custom_object(G, V, namespace, "workloads", "a", got)
    assert exc.value.status == 409
    assert orjson.loads(exc.value.body)["reason"] == "Conflict"
    with pytest.raises(ApiException) as exc:
        custom.create_namespaced_custom_object(G, V, namespace, "workloads", workload("a"))
    assert exc.value.status == 409 and orjson.loads(exc.value.body)["reason"] == "AlreadyExists"
    custom.delete_namespaced_custom_object(G, V, namespace, "workloads", "a")
    with pytest.raises(ApiException) as exc:
        custom.get_namespaced_custom_object(G, V, namespace, "workloads", "a")
    assert exc.value.status == 404


def test_generate_name_and_pagination(custom: client.CustomObjectsApi, namespace: str) -> None:
    names = set()
    for _ in range(7):
        body = workload("")
        del body["metadata"]["name"]
        body["metadata"]["generateName"] = "gen-"
        names.add(custom.create_namespaced_custom_object(G, V, namespace, "workloads", body)["metadata"]["name"])
    assert len(names) == 7 and all(n.startswith("gen-") and len(n) == 9 for n in names)
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = custom.list_namespaced_custom_object(G, V, namespace, "workloads", limit=3, _continue=token)
        seen += [o["metadata"]["name"] for o in page["items"]]
        pages += 1
        token = page["metadata"].get("continue")
        if not token:
            break
    assert sorted(seen) == sorted(names) and pages == 3


def test_status_subresource_and_generation(custom: client.CustomObjectsApi, namespace: str) -> None:
    custom.create_namespaced_custom_object(G, V, namespace, "workloads", workload("s"))
    patched = custom.patch_namespaced_custom_object_status(G, V, namespace, "workloads", "s", {"status": {"replicas": 1, "observedGeneration": 1}})
    assert patched["status"]["replicas"] == 1
    assert patched["metadata"]["generation"] == 1  # a status write is not a spec change
    # Writes to the main resource ignore status.
    main = custom.patch_namespaced_custom_object(G, V, namespace, "workloads", "s", {"spec": {"replicas": 4}, "status": {"replicas": 99}})
    assert main["status"]["replicas"] == 1 and main["metadata"]["generation"] == 2
    # Writes to /status ignore spec.
    status_only = custom.patch_namespaced_custom_object_status(G, V, namespace, "workloads", "s", {"spec": {"replicas": 50}, "status": {"replicas": 2}})
    assert status_only["spec"]["replicas"] == 4 and status_only["status"]["replicas"] == 2


def test_json_patch_test_guard_and_ssa(custom: client.CustomObjectsApi, namespace: str) -> None:
    obj = custom.create_namespaced_custom_object(G, V, namespace, "workloads", workload("p"))
    rv = obj["metadata"]["resourceVersion"]
    # kopf's finalizer patch: a JSON patch guarded by a test of resourceVersion.
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv}, {"op": "add", "path": "/metadata/finalizers", "value": ["x.io/f"]}]
    out = custom.patch_namespaced_custom_object(G, V, namespace, "workloads", "p", ops, _content_type="application/json-patch+json")
    assert out["metadata"]["finalizers"] == ["x.io/f"]
    with pytest.raises(ApiException) as exc:
        custom.patch_namespaced_custom_object(G, V, namespace, "workloads", "p", ops, _content_type="application/json-patch+json")
    assert exc.value.status == 422
    assert custom.get_namespaced_custom_object(G, V, namespace, "workloads", "p")["metadata"]["finalizers"] == ["x.io/f"]
    # Server-side apply creating an object answers 201.
    result = custom.patch_namespaced_custom_object_with_http_info(
        G, V, namespace, "workloads", "ssa", workload("ssa", 2), field_manager="tester", _content_type="application/apply-patch+yaml"
    )
    assert result[1] == 201  # (data, status, headers)
    assert custom.get_namespaced_custom_object(G, V, namespace, "workloads", "ssa")["metadata"]["managedFields"][0]["manager"] == "tester"


def test_watch_resume_and_bookmarks(custom: client.CustomObjectsApi, namespace: str) -> None:
    listing = custom.list_namespaced_custom_object(G, V, namespace, "workloads")
    rv = listing["metadata"]["resourceVersion"]
    for i in range(3):
        custom.create_namespaced_custom_object(G, V, namespace, "workloads", workload(f"w{i}"))
    custom.delete_namespaced_custom_object(G, V, namespace, "workloads", "w0")
    events = []
    w = watch.Watch()
    for event in w.stream(custom.list_namespaced_custom_object, G, V, namespace, "workloads", resource_version=rv, timeout_seconds=2, allow_watch_bookmarks=True):
        events.append((event["type"], event["object"]["metadata"]["name"]))
        if len(events) == 4:
            w.stop()
    assert events == [("ADDED", "w0"), ("ADDED", "w1"), ("ADDED", "w2"), ("DELETED", "w0")]


def test_watch_list_initial_events(server: Server, namespace: str) -> None:
    with server.http() as http:
        for name in ("x", "y"):
            http.post(f"/apis/{G}/{V}/namespaces/{namespace}/workloads", content=orjson.dumps(workload(name))).raise_for_status()
        url = f"/apis/{G}/{V}/namespaces/{namespace}/workloads?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=2"
        with http.stream("GET", url) as response:
            lines = [orjson.loads(line) for line in response.iter_lines() if line]
        kinds = [(e["type"], e["object"]["metadata"].get("name")) for e in lines[:3]]
        assert kinds == [("ADDED", "x"), ("ADDED", "y"), ("BOOKMARK", None)]
        assert lines[2]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"] == "true"
        # Ignoring sendInitialEvents' requirements is refused, never silently ignored.
        bad = http.get(f"/apis/{G}/{V}/namespaces/{namespace}/workloads?watch=true&sendInitialEvents=true")
        assert bad.status_code == 422


def test_http_edge_cases(server: Server, namespace: str) -> None:
    with server.http(cert=False) as anonymous:
        response = anonymous.get("/api")
        assert response.status_code == 401 and response.json()["reason"] == "Unauthorized"
        assert anonymous.get("/livez").status_code == 200
    with server.http() as http:
        base = f"/apis/{G}/{V}/namespaces/{namespace}/workloads"
        # No Content-Type at all means JSON (the python client does this).
        created = http.post(base, content=orjson.dumps(workload("noct")), headers={"content-type": ""})
        assert created.status_code == 201
        huge = http.post(base, content=b"{" + b" " * (3 * 1024 * 1024 + 10) + b"}")
        assert huge.status_code == 413 and huge.json()["kind"] == "Status"
        broken = http.post(base, content=b'{"apiVersion": "hypermesh.io/v1", "kind": ')
        assert broken.status_code == 400 and broken.json()["reason"] == "BadRequest"
        wrong_kind = http.post(base, content=orjson.dumps({**workload("k"), "kind": "Instance"}))
        assert wrong_kind.status_code == 400
        missing_ns = http.post(f"/apis/{G}/{V}/namespaces/nowhere/workloads", content=orjson.dumps(workload("z")))
        assert missing_ns.status_code == 404
        assert http.get(f"/apis/{G}/{V}/gadgets").status_code == 404
        bad_selector = http.get(base, params={"labelSelector": "a in (b"})
        assert bad_selector.status_code == 400
        dry = http.post(base, params={"dryRun": "All"}, content=orjson.dumps(workload("dry")))
        assert dry.status_code == 201
        assert http.get(f"{base}/dry").status_code == 404


@pytest.fixture(scope="module")
def compacting_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("compact") / "data", free_port(), env={"HYPERMESH_COMPACT_INTERVAL": "0.5", "HYPERMESH_COMPACT_MIN_HISTORY": "1"})
    srv.start()
    yield srv
    srv.stop()


def test_watch_from_compacted_revision_gets_410(compacting_server: Server) -> None:
    from kubernetes import config

    api = client.CustomObjectsApi(config.new_client_from_config(config_file=str(compacting_server.kubeconfig)))
    first = api.create_namespaced_custom_object(G, V, "default", "workloads", workload("old"))
    old_rv = first["metadata"]["resourceVersion"]
    for i in range(5):
        api.patch_namespaced_custom_object(G, V, "default", "workloads", "old", {"spec": {"replicas": i + 2}})
    time.sleep(2.5)
    # Make sure the watch cache no longer holds it either: a fresh kind cache starts now.
    with pytest.raises(ApiException) as exc:
        for _ in watch.Watch().stream(api.list_namespaced_custom_object, G, V, "default", "workloads", resource_version=old_rv, timeout_seconds=2):
            pass
    assert exc.value.status == 410


def test_workload_selector_defaults_and_rules(custom: client.CustomObjectsApi, namespace: str) -> None:
    created = custom.create_namespaced_custom_object(G, V, namespace, "workloads", workload("sel"))
    assert created["spec"]["selector"] == {"matchLabels": {"app": "sel"}}
    bare = workload("bare")
    del bare["spec"]["template"]["metadata"]
    created = custom.create_namespaced_custom_object(G, V, namespace, "workloads", bare)
    assert created["spec"]["selector"] == {"matchLabels": {"hypermesh.io/workload": "bare"}}
    assert created["spec"]["template"]["metadata"]["labels"] == {"hypermesh.io/workload": "bare"}
    mismatch = workload("mismatch")
    mismatch["spec"]["selector"] = {"matchLabels": {"app": "other"}}
    with pytest.raises(ApiException) as exc:
        custom.create_namespaced_custom_object(G, V, namespace, "workloads", mismatch)
    assert exc.value.status == 422 and "spec.template.metadata.labels" in exc.value.body
    with pytest.raises(ApiException) as exc:
        custom.patch_namespaced_custom_object(G, V, namespace, "workloads", "sel", {"spec": {"selector": {"matchLabels": {"app": "sel", "x": "y"}}, "template": {"metadata": {"labels": {"x": "y"}}}}})
    assert exc.value.status == 422 and "immutable" in exc.value.body


def test_delete_collection_with_selector(custom: client.CustomObjectsApi, namespace: str) -> None:
    for name, tier in (("a", "x"), ("b", "x"), ("c", "y")):
        body = workload(name)
        body["metadata"]["labels"] = {"tier": tier}
        custom.create_namespaced_custom_object(G, V, namespace, "workloads", body)
    custom.delete_collection_namespaced_custom_object(G, V, namespace, "workloads", label_selector="tier=x")
    left = custom.list_namespaced_custom_object(G, V, namespace, "workloads")["items"]
    assert [o["metadata"]["name"] for o in left] == ["c"]


def test_propagation_policies_hand_the_delete_to_the_collector(custom: client.CustomObjectsApi, namespace: str) -> None:
    for name, policy, finalizer in (("fg", "Foreground", "foregroundDeletion"), ("or", "Orphan", "orphan")):
        custom.create_namespaced_custom_object(G, V, namespace, "workloads", workload(name))
        deleting = custom.delete_namespaced_custom_object(G, V, namespace, "workloads", name, propagation_policy=policy)
        # This server runs without controllers: the object waits, visibly, for the collector.
        assert deleting["metadata"]["finalizers"] == [finalizer]
        assert deleting["metadata"]["deletionTimestamp"]
    with pytest.raises(ApiException) as exc:
        custom.delete_namespaced_custom_object(G, V, namespace, "workloads", "fg", propagation_policy="Sideways")
    assert exc.value.status == 400
