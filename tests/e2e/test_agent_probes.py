"""Container probes and log files end to end: a real server, a real `hypermesh agent` process and
real runc containers, probed over the node bridge (httpGet) and with `runc exec` (exec).

Needs root and runc (CI has both); elsewhere the module is skipped with the reason. The harness
is tests/e2e/agent_harness.py, with this module's own node, bridge and ULA prefix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import agent_harness
from tests.e2e.conftest import Server

pytestmark = [pytest.mark.timeout(240), *agent_harness.REQUIREMENTS]

NODE = "agent-probes-e2e"
BRIDGE = f"hmp{os.getpid() % 10000}"
PREFIX = f"fd{os.getpid() % 256:02x}:e2f::/48"
NODE_SPEC = agent_harness.AgentNode(NODE, BRIDGE, PREFIX)


def eventually(check: Callable[[], Any], timeout: float = 90.0, what: str = "condition") -> Any:
    return agent_harness.eventually(check, timeout, what)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    with agent_harness.running_cluster(tmp_path_factory.mktemp("agent-probes"), NODE_SPEC) as (server, agent_dir):
        yield server, agent_dir


def instance(server: Server, name: str) -> dict[str, Any]:
    return server.kubectl_json("get", "instance", name, "-n", "default")


def container_status(item: dict[str, Any]) -> dict[str, Any]:
    statuses = (item.get("status") or {}).get("containerStatuses") or []
    return statuses[0] if statuses else {}


def condition(item: dict[str, Any], kind: str) -> str | None:
    for entry in (item.get("status") or {}).get("conditions") or []:
        if entry.get("type") == kind:
            return str(entry.get("status"))
    return None


def events_about(server: Server, name: str) -> list[dict[str, Any]]:
    items = server.kubectl_json("get", "events", "-n", "default")["items"]
    return [e for e in items if e.get("involvedObject", {}).get("name") == name]


def create(server: Server, name: str, container: dict[str, Any]) -> None:
    server.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "hypermesh.io/v1", "kind": "Instance",
        "metadata": {"name": name, "namespace": "default", "labels": {"test": "probes"}},
        "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": 2, "containers": [{"name": "main", "image": "busybox", **container}]},
    }))


def test_an_instance_is_ready_only_once_its_readiness_probe_passes(cluster: tuple[Server, Path]) -> None:
    server, _ = cluster
    # The container becomes ready by itself a few seconds after it starts.
    create(server, "slow-ready", {
        "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 4; touch /tmp/ready; while :; do sleep 1; done"],
        "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1},
    })

    def running_but_unready() -> dict[str, Any] | None:
        item = instance(server, "slow-ready")
        status = container_status(item)
        return item if "running" in status.get("state", {}) and status.get("ready") is False else None

    item = eventually(running_but_unready, what="a running container that is not ready")
    assert item["status"]["phase"] == "Running"
    assert condition(item, "Ready") == "False" and condition(item, "ContainersReady") == "False"

    def ready() -> dict[str, Any] | None:
        item = instance(server, "slow-ready")
        return item if condition(item, "Ready") == "True" else None

    item = eventually(ready, what="the Instance to become Ready")
    status = container_status(item)
    assert status["ready"] is True and status["started"] is True and status["restartCount"] == 0
    # The probe failed before the file existed: kubelet's kind of Warning Event says so.
    unhealthy = [e for e in events_about(server, "slow-ready") if e["reason"] == "Unhealthy"]
    assert unhealthy and unhealthy[0]["type"] == "Warning"
    assert unhealthy[0]["message"].startswith("Readiness probe failed:")
    assert unhealthy[0]["involvedObject"]["kind"] == "Instance"


def test_a_failing_liveness_probe_restarts_the_container(cluster: tuple[Server, Path]) -> None:
    server, agent_dir = cluster
    # busybox httpd serves /healthz until the container deletes it a few seconds in.
    create(server, "goes-bad", {
        "command": ["sh", "-c"],
        "args": [
            "mkdir -p /www && echo ok > /www/healthz && echo serving\n"
            "httpd -f -p 8080 -h /www & pid=$!\n"
            "trap 'kill $pid; exit 0' TERM\n"
            "sleep 3; rm /www/healthz; wait\n"
        ],
        "ports": [{"name": "http", "containerPort": 8080}],
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1, "failureThreshold": 2},
    })

    def restarted() -> dict[str, Any] | None:
        status = container_status(instance(server, "goes-bad"))
        return status if status.get("restartCount", 0) >= 1 and "terminated" in status.get("lastState", {}) else None

    status = eventually(restarted, what="a restart after the liveness probe failed")
    terminated = status["lastState"]["terminated"]
    assert terminated["exitCode"] == 137 and terminated["reason"] == "Error"
    assert terminated["message"] == "Liveness probe failed: HTTP probe failed with statuscode: 404"
    reasons = {e["reason"] for e in events_about(server, "goes-bad")}
    assert {"Unhealthy", "Killing"} <= reasons

    # The run that was killed keeps its output as the previous run's log.
    uid = instance(server, "goes-bad")["metadata"]["uid"]
    previous = agent_dir / "instances" / uid / "main" / "stdout.log.previous"
    assert eventually(lambda: previous.exists() and previous.read_text(), what="the previous run's log") == "serving\n"


def test_deleting_probed_instances_cleans_up(cluster: tuple[Server, Path]) -> None:
    server, agent_dir = cluster
    uids = [item["metadata"]["uid"] for item in server.kubectl_json("get", "instances", "-n", "default", "-l", "test=probes")["items"]]
    server.kubectl("delete", "instances", "-n", "default", "-l", "test=probes", "--wait=false")
    eventually(lambda: not server.kubectl_json("get", "instances", "-n", "default", "-l", "test=probes")["items"], what="the Instances to go")
    eventually(lambda: not any((agent_dir / "instances" / uid).exists() for uid in uids), what="instance dirs removed")
    mounts = Path("/proc/self/mountinfo").read_text()
    assert not any(uid in mounts for uid in uids), "an overlay mount was left behind"
    # Probes of a container that is gone fail loudly if they go on; nothing of the kind happened.
    log = (agent_dir.parent / "agent.log").read_text()
    assert "Traceback" not in log and "Task was destroyed" not in log, log[-3000:]
