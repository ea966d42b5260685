"""RBAC end to end: real users (certificates from `hypermesh user create`), real kubectl and nexus.

A new user can do nothing but discovery and questions about itself; bindings grant exactly
what their roles say, inside their namespace; nobody grants what they lack; nodes get only
what is bound to them; every request lands in the hash-chained audit log.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import KUBECTL, VENV_BIN, Server, free_port

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("rbac")
    server = Server(base / "data", free_port())
    server.start()
    try:
        for ns in ("team-a", "team-b"):
            server.kubectl("create", "namespace", ns)
        yield server
    finally:
        server.stop()


def user(server: Server, name: str, *groups: str, allow_reserved: bool = False) -> Path:
    path = server.data_dir.parent / f"{name.replace(':', '-')}.kubeconfig"
    if not path.exists():
        args = [str(VENV_BIN / "hypermesh"), "user", "create", name, "--data-dir", str(server.data_dir), "--output", str(path)]
        if allow_reserved:
            args.append("--allow-reserved-groups")
        for group in groups:
            args += ["--group", group]
        subprocess.run(args, check=True, capture_output=True, text=True)
    return path


def kubectl_as(server: Server, kubeconfig: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    cache = server.data_dir.parent / f"kcache-{kubeconfig.stem}"
    return subprocess.run([KUBECTL, "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache), *args], input=input, capture_output=True, text=True, timeout=60)


def nexus_as(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "nexus"), "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, timeout=60)


WORKLOAD = """
apiVersion: hypermesh.io/v1
kind: Workload
metadata: {name: web}
spec:
  replicas: 1
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: busybox, command: ["sleep", "3600"]}]
"""


def test_a_new_user_can_do_nothing_but_ask(cluster: Server) -> None:
    kc = user(cluster, "newbie")
    denied = kubectl_as(cluster, kc, "get", "workloads", "-n", "team-a")
    assert denied.returncode != 0
    assert 'User "newbie" cannot list resource "workloads" in API group "hypermesh.io" in the namespace "team-a"' in denied.stderr
    assert kubectl_as(cluster, kc, "get", "namespaces").returncode != 0
    assert kubectl_as(cluster, kc, "get", "secrets", "-A").returncode != 0
    assert kubectl_as(cluster, kc, "api-resources").returncode == 0  # discovery stays open
    assert kubectl_as(cluster, kc, "auth", "can-i", "list", "workloads", "-n", "team-a").stdout.strip() == "no"
    who = nexus_as(kc, "auth", "whoami", "-o", "json")
    assert who.returncode == 0, who.stderr
    info = json.loads(who.stdout)["status"]["userInfo"]
    assert info["username"] == "newbie" and "system:authenticated" in info["groups"]
    whoami = kubectl_as(cluster, kc, "auth", "whoami")
    assert whoami.returncode == 0 and "newbie" in whoami.stdout


def test_view_edit_admin_bindings_in_one_namespace(cluster: Server) -> None:
    viewer, editor, admin = user(cluster, "vera"), user(cluster, "eddie"), user(cluster, "ada", "team-a-admins")
    cluster.kubectl("create", "rolebinding", "vera-view", "--clusterrole=view", "--user=vera", "-n", "team-a")
    cluster.kubectl("create", "rolebinding", "eddie-edit", "--clusterrole=edit", "--user=eddie", "-n", "team-a")
    cluster.kubectl("create", "rolebinding", "admins", "--clusterrole=admin", "--group=team-a-admins", "-n", "team-a")

    created = kubectl_as(cluster, editor, "apply", "-n", "team-a", "-f", "-", input=WORKLOAD)
    assert created.returncode == 0, created.stderr
    assert kubectl_as(cluster, viewer, "get", "workloads", "-n", "team-a").returncode == 0
    assert kubectl_as(cluster, viewer, "get", "workloads", "-n", "team-b").returncode != 0
    assert kubectl_as(cluster, viewer, "delete", "workload", "web", "-n", "team-a").returncode != 0
    assert kubectl_as(cluster, viewer, "apply", "-n", "team-a", "-f", "-", input=WORKLOAD.replace("web", "web2")).returncode != 0
    # view reads no Secrets; edit does.
    cluster.kubectl("create", "secret", "generic", "db", "--from-literal=password=hunter2", "-n", "team-a")
    assert kubectl_as(cluster, viewer, "get", "secret", "db", "-n", "team-a").returncode != 0
    assert kubectl_as(cluster, editor, "get", "secret", "db", "-n", "team-a").returncode == 0
    # Only admin manages bindings, and only in its namespace.
    assert kubectl_as(cluster, editor, "create", "rolebinding", "x", "--clusterrole=view", "--user=vera", "-n", "team-a").returncode != 0
    made = kubectl_as(cluster, admin, "create", "rolebinding", "vera-view-2", "--clusterrole=view", "--user=vera", "-n", "team-a")
    assert made.returncode == 0, made.stderr
    assert kubectl_as(cluster, admin, "create", "rolebinding", "x", "--clusterrole=view", "--user=vera", "-n", "team-b").returncode != 0
    assert nexus_as(editor, "-n", "team-a", "auth", "can-i", "create", "workloads").stdout.strip() == "yes"
    assert nexus_as(viewer, "-n", "team-a", "auth", "can-i", "create", "workloads").returncode == 1


def test_tenants_cannot_watch_each_other(cluster: Server) -> None:
    tenant = user(cluster, "tina")
    cluster.kubectl("create", "rolebinding", "tina-edit", "--clusterrole=edit", "--user=tina", "-n", "team-b")
    for args in (["get", "workloads", "-n", "team-a"], ["get", "workloads", "-A"], ["get", "workloads", "-n", "team-a", "--watch", "--request-timeout=2s"]):
        result = kubectl_as(cluster, tenant, *args)
        assert result.returncode != 0 and "forbidden" in result.stderr.lower(), (args, result.stderr)
    assert kubectl_as(cluster, tenant, "get", "workloads", "-n", "team-b").returncode == 0


def test_no_one_grants_what_they_lack(cluster: Server) -> None:
    boss = user(cluster, "boss")
    cluster.kubectl("create", "rolebinding", "boss-admin", "--clusterrole=admin", "--user=boss", "-n", "team-b")
    # An admin of team-b may not bind cluster-admin, nor write a role with more than it holds.
    result = kubectl_as(cluster, boss, "create", "rolebinding", "up", "--clusterrole=cluster-admin", "--user=boss", "-n", "team-b")
    assert result.returncode != 0 and "would grant permissions the user does not hold" in result.stderr
    result = kubectl_as(cluster, boss, "create", "role", "nodes", "--verb=get", "--resource=nodes.hypermesh.io", "-n", "team-b")
    assert result.returncode != 0 and "does not hold" in result.stderr
    result = kubectl_as(cluster, boss, "create", "role", "reader", "--verb=get,list", "--resource=workloads.hypermesh.io", "-n", "team-b")
    assert result.returncode == 0, result.stderr
    cluster.kubectl("create", "clusterrolebinding", "x-view", "--clusterrole=view", "--user=someone")
    binding = cluster.kubectl_json("get", "clusterrolebinding", "x-view")
    binding["roleRef"]["name"] = "edit"
    changed = cluster.kubectl("replace", "-f", "-", input=json.dumps(binding), check=False)
    assert changed.returncode != 0 and "cannot change roleRef" in changed.stderr


def test_default_roles_exist(cluster: Server) -> None:
    names = {item["metadata"]["name"] for item in cluster.kubectl_json("get", "clusterroles")["items"]}
    assert {"cluster-admin", "admin", "edit", "view"} <= names
    binding = cluster.kubectl_json("get", "clusterrolebinding", "cluster-admin")
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:masters"}]


def test_the_audit_log_records_and_verifies(cluster: Server) -> None:
    kc = user(cluster, "auditee")
    kubectl_as(cluster, kc, "get", "workloads", "-n", "team-a")
    log = cluster.data_dir / "audit.log"
    deadline_lines = []
    for _ in range(50):
        deadline_lines = [json.loads(line) for line in log.read_text().splitlines() if line]
        if any(entry["user"] == "auditee" for entry in deadline_lines):
            break
        subprocess.run(["sleep", "0.1"])
    mine = [entry for entry in deadline_lines if entry["user"] == "auditee" and entry.get("resource", {}).get("resource") == "workloads"]
    assert mine and mine[-1]["code"] == 403 and mine[-1]["verb"] == "list"
    assert mine[-1]["resource"]["namespace"] == "team-a"
    assert "hunter2" not in log.read_text()
    ok = subprocess.run([str(VENV_BIN / "hypermesh"), "audit", "verify", str(log)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    copy = cluster.data_dir.parent / "audit-edited.log"
    lines = log.read_text().splitlines()
    lines[2] = lines[2].replace('"code":', '"code":1', 1)
    copy.write_text("\n".join(lines) + "\n")
    bad = subprocess.run([str(VENV_BIN / "hypermesh"), "audit", "verify", str(copy)], capture_output=True, text=True)
    assert bad.returncode == 1 and ":3:" in bad.stderr


NODE_OBJECT = {"apiVersion": "hypermesh.io/v1", "kind": "Node", "metadata": {"name": "{name}"}, "spec": {}}


def test_the_node_authoriser(cluster: Server) -> None:
    kc = user(cluster, "system:node:n1", "system:nodes", allow_reserved=True)
    for name in ("n1", "n2"):
        created = kubectl_as(cluster, kc, "create", "-f", "-", input=json.dumps({**NODE_OBJECT, "metadata": {"name": name}}))
        if name == "n1":
            assert created.returncode == 0, created.stderr
        else:
            assert created.returncode != 0 and "registers only itself" in created.stderr
    assert kubectl_as(cluster, kc, "get", "node.hypermesh.io", "n1").returncode == 0
    cluster.kubectl("create", "-f", "-", input=json.dumps({**NODE_OBJECT, "metadata": {"name": "n2"}}))
    assert kubectl_as(cluster, kc, "get", "node.hypermesh.io", "n2").returncode != 0
    assert kubectl_as(cluster, kc, "label", "node.hypermesh.io", "n2", "x=y").returncode != 0
    assert kubectl_as(cluster, kc, "label", "node.hypermesh.io", "n1", "x=y").returncode == 0
    # Instances: only through its own nodeName selector; no Secrets, no Workloads.
    assert kubectl_as(cluster, kc, "get", "instances", "-A").returncode != 0
    assert kubectl_as(cluster, kc, "get", "instances", "-A", "--field-selector", "spec.nodeName=n1").returncode == 0
    assert kubectl_as(cluster, kc, "get", "instances", "-A", "--field-selector", "spec.nodeName=n2").returncode != 0
    assert kubectl_as(cluster, kc, "get", "secrets", "-n", "team-a").returncode != 0
    assert kubectl_as(cluster, kc, "get", "workloads", "-n", "team-a").returncode != 0
