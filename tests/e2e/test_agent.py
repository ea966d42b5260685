"""The node agent end to end: a real server with its controllers, a real `hypermesh agent`
process, real runc containers in their own network namespaces.

Needs root and runc (CI has both); elsewhere the module is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import agent_harness
from tests.e2e.conftest import Server

pytestmark = [pytest.mark.timeout(180), *agent_harness.REQUIREMENTS]

NODE = "agent-e2e"
BRIDGE = f"hmt{os.getpid() % 10000}"
PREFIX = f"fd{os.getpid() % 256:02x}:e2e::/48"
NODE_SPEC = agent_harness.AgentNode(NODE, BRIDGE, PREFIX)


def eventually(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    return agent_harness.eventually(check, timeout, what)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    with agent_harness.running_cluster(tmp_path_factory.mktemp("agent"), NODE_SPEC) as (server, agent_dir):
        yield server, agent_dir


def instances(server: Server, selector: str) -> list[dict[str, Any]]:
    return server.kubectl_json("get", "instances", "-n", "default", "-l", selector)["items"]


def running(server: Server, selector: str, count: int) -> list[dict[str, Any]] | None:
    items = instances(server, selector)
    live = [i for i in items if (i.get("status") or {}).get("phase") == "Running" and i["status"].get("instanceIP")]
    return live if len(live) == count and len(items) == count else None


def test_the_node_registers_with_host_capacity(cluster: tuple[Server, Path]) -> None:
    server, _ = cluster
    node = server.kubectl_json("get", "nodes", NODE)
    assert node["status"]["capacity"]["cpu"] == str(os.cpu_count())
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith(("runc://", "crun://"))
    assert node["metadata"]["labels"]["kubernetes.io/os"] == "linux"
    lease = server.kubectl_json("get", "lease", NODE, "-n", "hypermesh-node-lease")
    assert lease["spec"]["holderIdentity"] == NODE


def test_hello_workload_runs_and_answers_over_ipv6(cluster: tuple[Server, Path]) -> None:
    server, agent_dir = cluster
    hello = (Path(__file__).parents[2] / "manifests" / "hello.yaml").read_text()
    server.kubectl("apply", "-f", "-", input=hello)
    live = eventually(lambda: running(server, "app=hello", 3), what="3 Running Instances")
    for instance in live:
        address = instance["status"]["instanceIP"]
        assert ":" in address  # IPv6 from the node's /64
        body = eventually(lambda a=address: _fetch(f"http://[{a}]:8080/"), timeout=20, what=f"an answer from {address}")
        assert body.startswith("hello from ")
        status = instance["status"]["containerStatuses"][0]
        assert "running" in status["state"] and status["ready"] is True
    uids = [i["metadata"]["uid"] for i in live]

    # Deleting the Workload stops and removes everything the agent made for its Instances.
    server.kubectl("delete", "workload", "hello", "-n", "default")
    eventually(lambda: not instances(server, "app=hello"), what="the Instances to go")
    eventually(lambda: not any((agent_dir / "instances" / uid).exists() for uid in uids), what="instance dirs removed")
    mounts = Path("/proc/self/mountinfo").read_text()
    assert not any(uid in mounts for uid in uids), "an overlay mount was left behind"
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(uid[:8] in netns for uid in uids), netns
    cgroups = [p for p in Path("/sys/fs/cgroup").glob("*/hypermesh/*") if any(uid in p.name for uid in uids)]
    assert not cgroups, cgroups


def test_a_failing_container_crash_loops_and_says_so(cluster: tuple[Server, Path]) -> None:
    server, _ = cluster
    server.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "hypermesh.io/v1", "kind": "Instance",
        "metadata": {"name": "crasher", "namespace": "default", "labels": {"app": "crasher"}},
        "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "echo bye; exit 3"]}]},
    }))

    def backing_off() -> dict[str, Any] | None:
        item = server.kubectl_json("get", "instance", "crasher", "-n", "default")
        statuses = (item.get("status") or {}).get("containerStatuses") or []
        if statuses and statuses[0].get("restartCount", 0) >= 1 and "waiting" in statuses[0]["state"]:
            return statuses[0]
        return None

    status = eventually(backing_off, what="a restart with backoff")
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert status["lastState"]["terminated"]["exitCode"] == 3
    server.kubectl("delete", "instance", "crasher", "-n", "default")


def test_a_missing_image_waits_with_a_clear_reason(cluster: tuple[Server, Path]) -> None:
    server, _ = cluster
    server.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "hypermesh.io/v1", "kind": "Instance",
        "metadata": {"name": "noimage", "namespace": "default"},
        "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "nosuch/image:1"}]},
    }))

    def waiting_reason() -> str | None:
        item = server.kubectl_json("get", "instance", "noimage", "-n", "default")
        statuses = (item.get("status") or {}).get("containerStatuses") or []
        return statuses[0]["state"].get("waiting", {}).get("reason") if statuses else None

    assert eventually(waiting_reason, what="a waiting reason") == "ImageNotFound"
    server.kubectl("delete", "instance", "noimage", "-n", "default")


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _fetch(url: str) -> str | None:
    try:
        with _DIRECT.open(url, timeout=2) as answer:
            return str(answer.read().decode())
    except OSError:
        return None


def test_a_read_only_root_filesystem_refuses_writes(cluster: tuple[Server, Path]) -> None:
    server, _ = cluster
    server.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "hypermesh.io/v1", "kind": "Instance",
        "metadata": {"name": "readonly", "namespace": "default"},
        "spec": {
            "nodeName": NODE, "restartPolicy": "Never",
            "containers": [{
                "name": "main", "image": "busybox", "command": ["sh", "-c", "touch /written"],
                "securityContext": {"readOnlyRootFilesystem": True},
            }],
        },
    }))

    def finished() -> dict[str, Any] | None:
        item = server.kubectl_json("get", "instance", "readonly", "-n", "default")
        return item if (item.get("status") or {}).get("phase") in ("Succeeded", "Failed") else None

    item = eventually(finished, what="the container to finish")
    assert item["status"]["phase"] == "Failed"
    assert item["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] != 0
    server.kubectl("delete", "instance", "readonly", "-n", "default")
