"""PriorityClasses with the real kubectl (1.37.1) against a real server.

What a user sees: the kind in discovery and in `kubectl get`, the two system classes every
cluster has, an Instance that names a class getting the class's value, and a class that does
not exist refusing the Instance (403, nothing stored).
"""

from __future__ import annotations

from tests.e2e.conftest import Server

HIGH = """
apiVersion: scheduling.k8s.io/v1
kind: PriorityClass
metadata:
  name: e2e-high
value: 100000
description: For the e2e test's important Instances.
"""

INSTANCE = """
apiVersion: hypermesh.io/v1
kind: Instance
metadata:
  name: {name}
spec:
  priorityClassName: {klass}
  containers:
  - name: main
    image: busybox
"""


def test_discovery_and_table(server: Server) -> None:
    resources = server.kubectl("api-resources", "--api-group=scheduling.k8s.io").stdout
    (row,) = [line.split() for line in resources.splitlines()[1:]]
    assert row == ["priorityclasses", "pc", "scheduling.k8s.io/v1", "false", "PriorityClass"]

    table = server.kubectl("get", "priorityclasses").stdout.splitlines()
    assert table[0].split() == ["NAME", "VALUE", "GLOBAL-DEFAULT", "AGE", "PREEMPTIONPOLICY"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["system-cluster-critical"][1:3] == ["2000000000", "false"]
    assert rows["system-node-critical"][1:3] == ["2000001000", "false"]

    refused = server.kubectl("delete", "pc", "system-node-critical", check=False)
    assert refused.returncode != 0
    assert "Error from server (Forbidden)" in refused.stderr
    assert "this is a system priority class and cannot be deleted" in refused.stderr


def test_an_instance_gets_its_class_value(server: Server, namespace: str) -> None:
    created = server.kubectl("create", "-f", "-", input=HIGH).stdout
    assert "priorityclass.scheduling.k8s.io/e2e-high created" in created
    try:
        klass = server.kubectl_json("get", "pc", "e2e-high")
        assert (klass["value"], klass["globalDefault"], klass["preemptionPolicy"]) == (
            100000,
            False,
            "PreemptLowerPriority",
        )

        server.kubectl(
            "create",
            "-n",
            namespace,
            "-f",
            "-",
            input=INSTANCE.format(name="vip", klass="e2e-high"),
        )
        instance = server.kubectl_json("get", "-n", namespace, "instance", "vip")
        assert instance["spec"]["priorityClassName"] == "e2e-high"
        assert instance["spec"]["priority"] == 100000
    finally:
        server.kubectl("delete", "pc", "e2e-high", check=False)


def test_an_unknown_class_is_forbidden_and_nothing_is_stored(
    server: Server, namespace: str
) -> None:
    result = server.kubectl(
        "create",
        "-n",
        namespace,
        "-f",
        "-",
        input=INSTANCE.format(name="ghost", klass="no-such-class"),
        check=False,
    )
    assert result.returncode != 0
    assert "Error from server (Forbidden)" in result.stderr
    assert (
        'instances.hypermesh.io "ghost" is forbidden: no PriorityClass with name no-such-class was found'
        in result.stderr
    )

    # The Status body carries the code and reason clients branch on.
    with server.http() as http:
        body = {
            "apiVersion": "hypermesh.io/v1",
            "kind": "Instance",
            "metadata": {"name": "ghost"},
            "spec": {
                "priorityClassName": "no-such-class",
                "containers": [{"name": "main", "image": "busybox"}],
            },
        }
        answer = http.post(f"/apis/hypermesh.io/v1/namespaces/{namespace}/instances", json=body)
        assert answer.status_code == 403
        status = answer.json()
        assert (status["kind"], status["reason"], status["code"]) == ("Status", "Forbidden", 403)

    missing = server.kubectl("get", "-n", namespace, "instance", "ghost", check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr
    assert server.kubectl("get", "-n", namespace, "instances", "-o", "name").stdout.strip() == ""


def test_kubectl_apply_of_a_changed_class_patches_it(server: Server) -> None:
    # kubectl knows PriorityClass from its own scheme, so re-applying a changed file sends a
    # strategic merge patch; the server must take it like any built-in kind.
    doc = HIGH.replace("e2e-high", "e2e-apply")
    server.kubectl("apply", "-f", "-", input=doc)
    server.kubectl("apply", "-f", "-", input=doc.replace("For the e2e test's important Instances.", "Changed."))
    assert server.kubectl_json("get", "priorityclass", "e2e-apply")["description"] == "Changed."
    server.kubectl("patch", "priorityclass", "e2e-apply", "-p", '{"description": "Patched."}')
    assert server.kubectl_json("get", "priorityclass", "e2e-apply")["description"] == "Patched."
    server.kubectl("delete", "priorityclass", "e2e-apply")
