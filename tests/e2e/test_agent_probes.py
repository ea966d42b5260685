"""Container probes and log files end to end: a real server, a real `hypermesh agent` process and
real runc containers, probed over the node bridge (httpGet) and with `runc exec` (exec).

Needs root and runc (CI has both); elsewhere the module is skipped with the reason. The harness
is the one of test_agent.py, with its own node, bridge and ULA prefix so both modules can run in
one pytest session.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import VENV_BIN, Server, free_port

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(os.geteuid() != 0, reason="the node agent needs root (runc, mounts, network namespaces)"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed (make setup installs it)"),
]

NODE = "agent-probes-e2e"
BRIDGE = f"hmp{os.getpid() % 10000}"
PREFIX = f"fd{os.getpid() % 256:02x}:e2f::/48"


def eventually(check: Callable[[], Any], timeout: float = 90.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached in {timeout:.0f}s"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    base = tmp_path_factory.mktemp("agent-probes")
    server = Server(base / "data", free_port(), controllers=True)
    server.start()
    agent_dir = base / "agent"
    log = open(base / "agent.log", "a")
    agent = subprocess.Popen(
        [str(VENV_BIN / "hypermesh"), "agent", "--kubeconfig", str(server.kubeconfig), "--name", NODE,
         "--data-dir", str(agent_dir), "--bridge", BRIDGE, "--cluster-prefix", PREFIX],
        stdout=subprocess.PIPE, stderr=log, text=True,
    )
    assert agent.stdout is not None
    line = agent.stdout.readline().strip()
    assert line == "ready", (base / "agent.log").read_text()
    try:
        yield server, agent_dir
    finally:
        # Let the agent stop and clean up what it ran, then sweep whatever is left, so a failed
        # test never leaves containers, mounts or namespaces on the machine.
        server.kubectl("delete", "instances", "--all", "-n", "default", "--wait=false", check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any((agent_dir / "instances").glob("*")):
            time.sleep(0.3)
        agent.terminate()
        agent.wait(20)
        server.stop()
        sweep(agent_dir)


def sweep(agent_dir: Path) -> None:
    """Remove every container, mount and network namespace under `agent_dir` (test hygiene)."""
    from hypermesh.runtime import network, rootfs

    root = agent_dir / "oci" / "runc"
    listing = subprocess.run(["runc", "--root", str(root), "list", "-q"], capture_output=True, text=True)
    for cid in listing.stdout.split():
        subprocess.run(["runc", "--root", str(root), "delete", "--force", cid], capture_output=True)
    for workdir in (agent_dir / "instances").glob("*/*"):
        rootfs.unmount_rootfs(workdir)
    state = agent_dir / "network"
    if state.exists():
        manager = network.NetworkManager(network.NodeNetwork.for_prefix(_node_prefix(), bridge=BRIDGE), state)
        manager.cleanup_orphans(keep=set())
    subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True)


def _node_prefix() -> str:
    from ipaddress import IPv6Network

    from hypermesh.runtime.agent import node_prefix

    return str(node_prefix(IPv6Network(PREFIX), NODE, None))


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
