"""The binding subresource of Instances and its batch form, against a real server process.

A Binding is the scheduler's write: it must set `spec.nodeName` only when the Instance has
none (a compare-and-swap), honour a resourceVersion or uid precondition, leave the rest of the
object (managedFields, generation) alone, and say precisely what was wrong with a bad body.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import Server

pytestmark = pytest.mark.timeout(120)


def instance(name: str) -> str:
    return json.dumps({
        "apiVersion": "hypermesh.io/v1",
        "kind": "Instance",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    })


def binding(name: str, node: str, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, **meta}, "target": {"kind": "Node", "name": node}}


def path(namespace: str, name: str) -> str:
    return f"/apis/hypermesh.io/v1/namespaces/{namespace}/instances/{name}/binding"


def test_kubectl_binds_an_instance_once(server: Server, namespace: str, tmp_path) -> None:
    server.kubectl("apply", "-n", namespace, "-f", "-", input=instance("one"))
    before = server.kubectl_json("get", "instance", "one", "-n", namespace, "--show-managed-fields")
    body = tmp_path / "binding.json"
    body.write_text(json.dumps(binding("one", "node-a")))
    answer = json.loads(server.kubectl("create", "--raw", path(namespace, "one"), "-f", str(body)).stdout)
    assert answer["status"] == "Success"

    after = server.kubectl_json("get", "instance", "one", "-n", namespace, "--show-managed-fields")
    assert after["spec"]["nodeName"] == "node-a"
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    # Placement is not a change of intent: no new generation, no new field manager.
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["metadata"]["managedFields"] == before["metadata"]["managedFields"]

    # A second binding, to any node, is refused: the Instance is already placed.
    body.write_text(json.dumps(binding("one", "node-b")))
    again = server.kubectl("create", "--raw", path(namespace, "one"), "-f", str(body), check=False)
    assert again.returncode != 0
    assert "already assigned to node" in again.stderr
    assert server.kubectl_json("get", "instance", "one", "-n", namespace)["spec"]["nodeName"] == "node-a"


def test_binding_preconditions_and_bad_bodies(server: Server, namespace: str) -> None:
    server.kubectl("apply", "-n", namespace, "-f", "-", input=instance("two"))
    rv = server.kubectl_json("get", "instance", "two", "-n", namespace)["metadata"]["resourceVersion"]
    with server.http() as http:
        url = path(namespace, "two")
        stale = http.post(url, json=binding("two", "node-a", resourceVersion=str(int(rv) - 1)))
        assert stale.status_code == 409
        wrong_uid = http.post(url, json=binding("two", "node-a", uid="not-the-uid"))
        assert wrong_uid.status_code == 409 and "UID" in wrong_uid.json()["message"]

        no_target = http.post(url, json={"kind": "Binding", "metadata": {"name": "two"}})
        assert no_target.status_code == 400 and "target" in no_target.json()["message"]
        other_kind = http.post(url, json={**binding("two", "x"), "target": {"kind": "Pod", "name": "x"}})
        assert other_kind.status_code == 400 and "only Node" in other_kind.json()["message"]
        other_name = http.post(url, json=binding("three", "node-a"))
        assert other_name.status_code == 400 and "does not match" in other_name.json()["message"]
        missing = http.post(path(namespace, "nope"), json=binding("nope", "node-a"))
        assert missing.status_code == 404
        assert http.get(url).status_code == 405

        # None of that changed the Instance; a correct binding with the right version works.
        assert "nodeName" not in server.kubectl_json("get", "instance", "two", "-n", namespace)["spec"]
        ok = http.post(url, json=binding("two", "node-a", resourceVersion=rv))
        assert ok.status_code == 201, ok.text
        # Only Instances have the subresource.
        assert http.post(f"/api/v1/namespaces/{namespace}/secrets/x/binding", json=binding("x", "n")).status_code == 404


def test_batch_binding_decides_each_item_alone(server: Server, namespace: str) -> None:
    for name in ("b1", "b2", "b3"):
        server.kubectl("apply", "-n", namespace, "-f", "-", input=instance(name))
    server.kubectl("delete", "instance", "b3", "-n", namespace)
    with server.http() as http:
        assert http.post(path(namespace, "b2"), json=binding("b2", "first")).status_code == 201
        items = [
            {**binding("b1", "n1"), "metadata": {"name": "b1", "namespace": namespace}},
            {**binding("b2", "n2"), "metadata": {"name": "b2", "namespace": namespace}},
            {**binding("b3", "n3"), "metadata": {"name": "b3", "namespace": namespace}},
            {"kind": "Binding", "metadata": {"name": "b4"}},
        ]
        answer = http.post("/apis/hypermesh.io/v1/bindings", json={"kind": "BindingList", "items": items})
        assert answer.status_code == 200, answer.text
        results = answer.json()["items"]
        assert [r["code"] for r in results] == [201, 409, 404, 400]
        assert [r["status"] for r in results] == ["Success", "Failure", "Failure", "Failure"]
        assert results[1]["details"]["name"] == "b2" and "already assigned" in results[1]["message"]
        assert "items[3].metadata" in results[3]["message"]

        not_a_list = http.post("/apis/hypermesh.io/v1/bindings", json={"kind": "BindingList", "items": {}})
        assert not_a_list.status_code == 400
        assert http.get("/apis/hypermesh.io/v1/bindings").status_code == 405
    assert server.kubectl_json("get", "instance", "b1", "-n", namespace)["spec"]["nodeName"] == "n1"
    assert server.kubectl_json("get", "instance", "b2", "-n", namespace)["spec"]["nodeName"] == "first"


def test_discovery_lists_the_binding_subresource(server: Server) -> None:
    resources = json.loads(server.kubectl("get", "--raw", "/apis/hypermesh.io/v1").stdout)["resources"]
    entry = next(r for r in resources if r["name"] == "instances/binding")
    assert entry["verbs"] == ["create"] and entry["kind"] == "Binding"
