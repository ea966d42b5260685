"""The real kubectl (1.37.1) against a real server: what users type every day."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.e2e.conftest import KUBECTL, Server

WORKLOAD = """
apiVersion: hypermesh.io/v1
kind: Workload
metadata:
  name: web
  labels: {app: web, tier: front}
spec:
  replicas: 3
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: busybox
        command: ["httpd", "-f", "-p", "8080"]
        ports: [{name: http, containerPort: 8080}]
"""


def test_discovery_lists_every_kind(server: Server) -> None:
    out = server.kubectl("api-resources").stdout
    for name in ("workloads", "instances", "nodes", "services", "endpoints", "certificates", "namespaces", "events", "secrets", "leases", "customresourcedefinitions"):
        assert name in out, f"{name} missing from api-resources:\n{out}"
    assert "wl" in out and "hypermesh.io/v1" in out


def test_version(server: Server) -> None:
    out = json.loads(server.kubectl("version", "-o", "json").stdout)
    assert out["serverVersion"]["major"] == "1"


def test_apply_create_configure_unchanged(server: Server, namespace: str) -> None:
    first = server.kubectl("apply", "-n", namespace, "-f", "-", input=WORKLOAD).stdout
    assert "workload.hypermesh.io/web created" in first
    same = server.kubectl("apply", "-n", namespace, "-f", "-", input=WORKLOAD).stdout
    assert "workload.hypermesh.io/web unchanged" in same
    changed = server.kubectl("apply", "-n", namespace, "-f", "-", input=WORKLOAD.replace("replicas: 3", "replicas: 5")).stdout
    assert "workload.hypermesh.io/web configured" in changed
    obj = server.kubectl_json("get", "-n", namespace, "workload", "web")
    assert obj["spec"]["replicas"] == 5
    assert obj["metadata"]["generation"] == 2
    # Defaults from the schema were filled in on the server.
    assert obj["spec"]["template"]["spec"]["restartPolicy"] == "Always"


def test_get_table_yaml_and_selectors(server: Server, namespace: str) -> None:
    server.kubectl("apply", "-n", namespace, "-f", "-", input=WORKLOAD)
    other = WORKLOAD.replace("name: web\n  labels: {app: web, tier: front}", "name: db\n  labels: {app: db, tier: back}")
    server.kubectl("apply", "-n", namespace, "-f", "-", input=other)
    table = server.kubectl("get", "-n", namespace, "wl").stdout
    header = table.splitlines()[0]
    assert header.split()[0] == "NAME" and "AGE" in header and "REPLICAS" in header.upper()
    assert {line.split()[0] for line in table.splitlines()[1:]} == {"web", "db"}
    names = server.kubectl("get", "-n", namespace, "wl", "-l", "tier=front", "-o", "name").stdout.split()
    assert names == ["workload.hypermesh.io/web"]
    names = server.kubectl("get", "-n", namespace, "wl", "-l", "tier in (front,back),app!=db", "-o", "name").stdout.split()
    assert names == ["workload.hypermesh.io/web"]
    names = server.kubectl("get", "-n", namespace, "wl", "--field-selector", "metadata.name=db", "-o", "name").stdout.split()
    assert names == ["workload.hypermesh.io/db"]
    yaml_out = server.kubectl("get", "-n", namespace, "wl", "web", "-o", "yaml").stdout
    assert "kind: Workload" in yaml_out and "resourceVersion:" in yaml_out
    labels = server.kubectl("get", "-n", namespace, "wl", "web", "--show-labels").stdout
    assert "tier=front" in labels
    everywhere = server.kubectl("get", "wl", "-A").stdout
    assert namespace in everywhere


def test_server_side_apply_conflicts_and_force(server: Server, namespace: str) -> None:
    server.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=WORKLOAD)
    obj = server.kubectl_json("get", "-n", namespace, "wl", "web", "--show-managed-fields")
    managers = {m["manager"] for m in obj["metadata"]["managedFields"]}
    assert "kubectl" in managers
    # Another manager changing replicas conflicts with kubectl's ownership.
    scale = "apiVersion: hypermesh.io/v1\nkind: Workload\nmetadata: {name: web}\nspec: {replicas: 7}\n"
    result = server.kubectl("apply", "--server-side", "--field-manager", "scaler", "-n", namespace, "-f", "-", input=scale, check=False)
    assert result.returncode != 0
    assert "conflict" in result.stderr.lower() and "kubectl" in result.stderr and ".spec.replicas" in result.stderr
    server.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager", "scaler", "-n", namespace, "-f", "-", input=scale)
    assert server.kubectl_json("get", "-n", namespace, "wl", "web")["spec"]["replicas"] == 7
    # A field the manager stops applying is removed; replicas now belongs to the scaler and stays.
    server.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=WORKLOAD.replace("        ports: [{name: http, containerPort: 8080}]\n", "").replace("  replicas: 3\n", ""))
    spec = server.kubectl_json("get", "-n", namespace, "wl", "web")["spec"]
    assert "ports" not in spec["template"]["spec"]["containers"][0]
    assert spec["replicas"] == 7


def test_patch_types(server: Server, namespace: str) -> None:
    server.kubectl("apply", "-n", namespace, "-f", "-", input=WORKLOAD)
    server.kubectl("patch", "-n", namespace, "wl", "web", "--type=merge", "-p", '{"spec":{"replicas":4}}')
    assert server.kubectl_json("get", "-n", namespace, "wl", "web")["spec"]["replicas"] == 4
    server.kubectl("patch", "-n", namespace, "wl", "web", "--type=json", "-p", '[{"op":"replace","path":"/spec/replicas","value":6}]')
    assert server.kubectl_json("get", "-n", namespace, "wl", "web")["spec"]["replicas"] == 6
    failed = server.kubectl("patch", "-n", namespace, "wl", "web", "--type=json", "-p", '[{"op":"test","path":"/spec/replicas","value":1},{"op":"replace","path":"/spec/replicas","value":9}]', check=False)
    assert failed.returncode != 0
    assert server.kubectl_json("get", "-n", namespace, "wl", "web")["spec"]["replicas"] == 6
    strategic = server.kubectl("patch", "-n", namespace, "wl", "web", "-p", '{"spec":{"replicas":2}}', check=False)
    assert strategic.returncode != 0 and "strategic-merge-patch" in strategic.stderr
    # Core kinds accept strategic merge patches, as kubectl sends for them.
    server.kubectl("label", "namespace", namespace, "team=blue")
    assert server.kubectl_json("get", "namespace", namespace)["metadata"]["labels"]["team"] == "blue"


def test_validation_errors_name_the_field(server: Server, namespace: str) -> None:
    bad = WORKLOAD.replace("replicas: 3", "replicas: three")
    result = server.kubectl("apply", "-n", namespace, "-f", "-", input=bad, check=False)
    assert result.returncode != 0
    assert "spec.replicas" in result.stderr
    unknown = WORKLOAD.replace("  replicas: 3", "  replicas: 3\n  replicaz: 4")
    result = server.kubectl("apply", "-n", namespace, "-f", "-", input=unknown, check=False)
    assert result.returncode != 0 and "replicaz" in result.stderr
    assert server.kubectl("get", "-n", namespace, "wl", "web", check=False).returncode != 0


def test_finalizers_and_delete_wait(server: Server, namespace: str) -> None:
    manifest = WORKLOAD.replace("  labels: {app: web, tier: front}", "  finalizers: [example.com/hold]")
    server.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    waiter = subprocess.Popen(
        [KUBECTL, "--kubeconfig", str(server.kubeconfig), "delete", "-n", namespace, "wl", "web", "--timeout=60s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        obj = server.kubectl_json("get", "-n", namespace, "wl", "web")
        if obj["metadata"].get("deletionTimestamp"):
            break
        time.sleep(0.2)
    assert obj["metadata"].get("deletionTimestamp"), "delete did not mark the object"
    assert waiter.poll() is None, "kubectl delete returned while a finalizer was pending"
    server.kubectl("patch", "-n", namespace, "wl", "web", "--type=json", "-p", '[{"op":"remove","path":"/metadata/finalizers"}]')
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert "deleted" in out
    assert "NotFound" in server.kubectl("get", "-n", namespace, "wl", "web", check=False).stderr


def test_watch_streams_rows(server: Server, namespace: str) -> None:
    proc = subprocess.Popen(
        [KUBECTL, "--kubeconfig", str(server.kubeconfig), "get", "-n", namespace, "wl", "-w", "--request-timeout=30s"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(1.0)
        server.kubectl("apply", "-n", namespace, "-f", "-", input=WORKLOAD)
        server.kubectl("patch", "-n", namespace, "wl", "web", "--type=merge", "-p", '{"spec":{"replicas":8}}')
        lines: list[str] = []
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len([ln for ln in lines if ln.startswith("web")]) < 2:
            lines.append(proc.stdout.readline())
        rows = [ln for ln in lines if ln.startswith("web")]
        assert len(rows) >= 2, lines
    finally:
        proc.kill()
        proc.wait()


def test_explain(server: Server) -> None:
    out = server.kubectl("explain", "workloads.spec").stdout
    assert "replicas" in out and "template" in out


CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wdg]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 1}
          status:
            type: object
            x-kubernetes-preserve-unknown-fields: true
"""


def test_crd_registration_and_removal(server: Server, namespace: str) -> None:
    server.kubectl("apply", "-f", "-", input=CRD)
    server.kubectl("wait", "--for=condition=established", "crd/widgets.example.com", "--timeout=30s")
    widget = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n"
    server.kubectl("apply", "-n", namespace, "-f", "-", input=widget)
    table = server.kubectl("get", "-n", namespace, "wdg").stdout
    assert "SIZE" in table and "w1" in table and "3" in table
    bad = server.kubectl("apply", "-n", namespace, "-f", "-", input=widget.replace("size: 3", "size: 0"), check=False)
    assert bad.returncode != 0 and "spec.size" in bad.stderr
    server.kubectl("delete", "crd", "widgets.example.com")
    gone = server.kubectl("get", "-n", namespace, "widgets", check=False)
    assert gone.returncode != 0


def test_namespace_delete_removes_contents(server: Server) -> None:
    server.kubectl("apply", "-f", "-", input="apiVersion: v1\nkind: Namespace\nmetadata: {name: doomed}\n")
    server.kubectl("apply", "-n", "doomed", "-f", "-", input=WORKLOAD)
    server.kubectl("delete", "namespace", "doomed", "--timeout=30s")
    assert server.kubectl("get", "namespace", "doomed", check=False).returncode != 0
    assert "web" not in server.kubectl("get", "wl", "-A").stdout.split()
    refused = server.kubectl("delete", "namespace", "default", check=False)
    assert refused.returncode != 0 and "Forbidden" in refused.stderr


def test_unknown_resource_and_missing_object(server: Server, namespace: str) -> None:
    missing = server.kubectl("get", "-n", namespace, "wl", "nope", check=False)
    assert missing.returncode != 0
    assert 'workloads.hypermesh.io "nope" not found' in missing.stderr
    unknown = server.kubectl("get", "gizmos", check=False)
    assert unknown.returncode != 0


@pytest.mark.parametrize("kind", ["secret", "lease"])
def test_core_kinds(server: Server, namespace: str, kind: str) -> None:
    if kind == "secret":
        # kubectl sends this one as protobuf.
        server.kubectl("create", "secret", "generic", "s1", "-n", namespace, "--from-literal=password=hunter2")
        data = server.kubectl_json("get", "secret", "s1", "-n", namespace)["data"]
        assert data["password"] == "aHVudGVyMg=="
        server.kubectl("apply", "-n", namespace, "-f", "-", input="apiVersion: v1\nkind: Secret\nmetadata: {name: s2}\nstringData: {token: abc}\n")
        assert server.kubectl_json("get", "secret", "s2", "-n", namespace)["data"] == {"token": "YWJj"}
    else:
        lease = "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: l1}\nspec: {holderIdentity: me, leaseDurationSeconds: 15, renewTime: '2026-11-27T03:00:00.123456Z'}\n"
        server.kubectl("apply", "-n", namespace, "-f", "-", input=lease)
        assert server.kubectl_json("get", "lease", "l1", "-n", namespace)["spec"]["holderIdentity"] == "me"


def test_server_side_reapply_of_a_bare_object_writes_nothing(server: Server) -> None:
    ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ssa-bare}\n"
    server.kubectl("apply", "--server-side", "-f", "-", input=ns)
    first = server.kubectl_json("get", "namespace", "ssa-bare")["metadata"]["resourceVersion"]
    server.kubectl("apply", "--server-side", "-f", "-", input=ns)
    assert server.kubectl_json("get", "namespace", "ssa-bare")["metadata"]["resourceVersion"] == first
