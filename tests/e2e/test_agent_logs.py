"""Logs and exec end to end: a real server, a real `hypermesh agent`, real runc containers, and
the requests going the way users send them (nexus, kubectl, raw HTTPS) through the API server's
proxy to the agent's endpoint.

Needs root and runc (CI has both); elsewhere the module is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.e2e import agent_harness
from tests.e2e.conftest import VENV_BIN, Server

pytestmark = [pytest.mark.timeout(240), *agent_harness.REQUIREMENTS]

NODE = "logs-e2e"
BRIDGE = f"hml{os.getpid() % 10000}"
PREFIX = f"fd{(os.getpid() + 77) % 256:02x}:10e5::/48"
NODE_SPEC = agent_harness.AgentNode(NODE, BRIDGE, PREFIX)


def eventually(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    return agent_harness.eventually(check, timeout, what)
NEXUS = str(VENV_BIN / "nexus")
LOG_PATH = "/apis/hypermesh.io/v1/namespaces/default/instances/{}/log"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with agent_harness.running_cluster(tmp_path_factory.mktemp("agent-logs"), NODE_SPEC) as (server, _):
        yield server


def nexus(server: Server, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NEXUS, "--kubeconfig", str(server.kubeconfig), "-n", "default", *args],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "HYPERMESH_HOME": str(server.data_dir.parent / "nexus-home"), "NO_COLOR": "1"},
    )


def instance(server: Server, name: str, script: str, **spec: Any) -> None:
    """Create an Instance on the test node whose one container runs `script` in sh."""
    body = {
        "apiVersion": "hypermesh.io/v1", "kind": "Instance",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": NODE,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script]}],
            **spec,
        },
    }
    server.kubectl("apply", "-f", "-", input=json.dumps(body))


def running(server: Server, name: str) -> bool:
    item = server.kubectl_json("get", "instance", name, "-n", "default")
    return (item.get("status") or {}).get("phase") == "Running"


@pytest.fixture(scope="module")
def printer(cluster: Server) -> str:
    """An Instance that printed five lines and a complaint, then waits."""
    instance(cluster, "printer", "for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; exec sleep 3600")
    eventually(lambda: running(cluster, "printer"), what="printer Running")
    eventually(lambda: "oops" in nexus(cluster, "logs", "printer").stdout, timeout=20, what="printer's output")
    return "printer"


def test_the_node_publishes_its_endpoint_and_discovery_lists_the_subresources(cluster: Server) -> None:
    node = cluster.kubectl_json("get", "node", NODE)
    endpoint = node["status"]["daemonEndpoints"]["agentEndpoint"]
    assert 0 < endpoint["port"] < 65536
    assert endpoint["certificateHash"].startswith("sha256:") and len(endpoint["certificateHash"]) == 71
    group = json.loads(cluster.kubectl("get", "--raw", "/apis/hypermesh.io/v1").stdout)
    verbs = {r["name"]: r["verbs"] for r in group["resources"]}
    assert verbs["instances/log"] == ["get"]
    assert verbs["instances/exec"] == ["create"]


def test_logs_show_stdout_then_stderr_and_tail_counts_lines(cluster: Server, printer: str) -> None:
    whole = nexus(cluster, "logs", printer)
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout == "line 1\nline 2\nline 3\nline 4\nline 5\noops\n"
    tail = nexus(cluster, "logs", printer, "--tail", "2")
    assert tail.stdout == "line 5\noops\n"
    # kubectl reaches the same subresource with a raw GET.
    raw = cluster.kubectl("get", "--raw", LOG_PATH.format(printer) + "?tailLines=3&stream=Stdout")
    assert raw.stdout == "line 3\nline 4\nline 5\n"
    limited = nexus(cluster, "logs", "instance/" + printer, "--limit-bytes", "6")
    assert limited.stdout == "line 1"


def test_follow_prints_new_lines_as_they_come(cluster: Server) -> None:
    instance(cluster, "ticker", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done")
    eventually(lambda: running(cluster, "ticker"), what="ticker Running")
    follow = subprocess.Popen(
        [NEXUS, "--kubeconfig", str(cluster.kubeconfig), "-n", "default", "logs", "ticker", "-f", "--tail", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert follow.stdout is not None
    stdout = follow.stdout
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    try:
        seen = [lines.get(timeout=15).strip() for _ in range(8)]
    finally:
        follow.terminate()
        follow.wait(10)
    numbers = [int(line.split()[1]) for line in seen]
    # Consecutive: nothing lost, nothing repeated between the tail and the follow.
    assert numbers == list(range(numbers[0], numbers[0] + 8)), seen
    server_log = cluster.log_path.read_text() if cluster.log_path else ""
    assert "Traceback" not in server_log


def test_a_follow_ends_when_the_container_does(cluster: Server) -> None:
    instance(cluster, "brief", "echo start; sleep 2; echo end", restartPolicy="Never")
    eventually(lambda: running(cluster, "brief") or "start" in nexus(cluster, "logs", "brief").stdout, what="brief started")
    started = time.monotonic()
    follow = nexus(cluster, "logs", "brief", "-f", timeout=30)
    assert follow.returncode == 0, follow.stderr
    assert follow.stdout == "start\nend\n"
    assert time.monotonic() - started < 15


def test_previous_shows_the_run_before_a_restart(cluster: Server) -> None:
    instance(cluster, "crasher", "echo run $(cat /proc/uptime); exit 3")

    def restarted() -> bool:
        item = cluster.kubectl_json("get", "instance", "crasher", "-n", "default")
        statuses = (item.get("status") or {}).get("containerStatuses") or []
        return bool(statuses) and statuses[0].get("restartCount", 0) >= 2

    eventually(restarted, what="two restarts")
    previous = nexus(cluster, "logs", "crasher", "--previous")
    assert previous.returncode == 0, previous.stderr
    assert previous.stdout.startswith("run ")
    current = nexus(cluster, "logs", "crasher")
    # Each run printed its own uptime: the previous run's line is not the current one's.
    if current.stdout:
        assert current.stdout != previous.stdout


def test_exec_runs_commands_and_passes_exit_codes_on(cluster: Server, printer: str) -> None:
    hostname = nexus(cluster, "exec", printer, "--", "hostname")
    assert hostname.returncode == 0, hostname.stderr
    assert hostname.stdout == "printer\n"
    # /etc/hostname and /etc/hosts are the Instance's, not the image's.
    assert nexus(cluster, "exec", printer, "--", "cat", "/etc/hostname").stdout == "printer\n"
    address = cluster.kubectl_json("get", "instance", printer, "-n", "default")["status"]["instanceIP"]
    assert f"{address}\tprinter" in nexus(cluster, "exec", printer, "--", "cat", "/etc/hosts").stdout
    failing = nexus(cluster, "exec", printer, "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert failing.returncode == 7
    assert failing.stdout == "out\n"
    assert "err\n" in failing.stderr and "command terminated with exit code 7" in failing.stderr
    missing = nexus(cluster, "exec", printer, "--", "no-such-command")
    assert missing.returncode == 1
    assert "no-such-command" in missing.stderr
    # -i/-t open an interactive session now (tests/e2e/test_agent_exec.py covers it).
    interactive = nexus(cluster, "exec", "-it", printer, "--", "true")
    assert interactive.returncode == 0, interactive.stderr


def test_exec_over_raw_https_answers_an_exec_result(cluster: Server, printer: str) -> None:
    with cluster.http() as http:
        answer = http.post(
            f"/apis/hypermesh.io/v1/namespaces/default/instances/{printer}/exec",
            params=[("command", "sh"), ("command", "-c"), ("command", "printf 'a b'; exit 2")],
        )
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["kind"] == "ExecResult"
    assert (result["exitCode"], result["stdout"], result["encoding"]) == (2, "a b", "text")


def test_errors_say_what_is_wrong(cluster: Server) -> None:
    # Never placed: no node has the label, so the scheduler leaves it unbound.
    body = {
        "apiVersion": "hypermesh.io/v1", "kind": "Instance",
        "metadata": {"name": "unbound", "namespace": "default"},
        "spec": {"nodeSelector": {"nowhere": "true"}, "containers": [{"name": "main", "image": "busybox"}]},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(body))
    unbound = nexus(cluster, "logs", "unbound")
    assert unbound.returncode == 1
    assert "Error from server (BadRequest)" in unbound.stderr and "not bound to a node" in unbound.stderr
    raw = cluster.kubectl("get", "--raw", LOG_PATH.format("unbound"), check=False)
    assert raw.returncode != 0 and "not bound to a node" in raw.stderr

    instance(
        cluster, "pair", "exec sleep 3600",
        containers=[
            {"name": "one", "image": "busybox", "command": ["sh", "-c", "echo from one; exec sleep 3600"]},
            {"name": "two", "image": "busybox", "command": ["sh", "-c", "echo from two; exec sleep 3600"]},
        ],
    )
    eventually(lambda: running(cluster, "pair"), what="pair Running")
    ambiguous = nexus(cluster, "logs", "pair")
    assert "a container name must be specified" in ambiguous.stderr and "[one two]" in ambiguous.stderr
    eventually(lambda: nexus(cluster, "logs", "pair", "-c", "two").stdout == "from two\n", timeout=20, what="two's output")
    assert "not valid" in nexus(cluster, "logs", "pair", "-c", "three").stderr


def test_a_wrong_certificate_hash_is_refused(cluster: Server, printer: str) -> None:
    node = cluster.kubectl_json("get", "node", NODE)
    good = node["status"]["daemonEndpoints"]["agentEndpoint"]["certificateHash"]
    wrong = "sha256:" + "0" * 64

    def publish(value: str) -> None:
        patch = {"status": {"daemonEndpoints": {"agentEndpoint": {"certificateHash": value}}}}
        cluster.kubectl("patch", "node", NODE, "--subresource=status", "--type=merge", "-p", json.dumps(patch))

    publish(wrong)
    try:
        refused = nexus(cluster, "logs", printer)
        assert refused.returncode == 1
        assert "BadGateway" in refused.stderr and "refusing" in refused.stderr and wrong in refused.stderr
        assert refused.stdout == ""
    finally:
        publish(good)
    assert nexus(cluster, "logs", printer, "--tail", "1").stdout == "oops\n"


def test_logs_of_a_workload_pick_one_of_its_instances(cluster: Server) -> None:
    workload = {
        "apiVersion": "hypermesh.io/v1", "kind": "Workload",
        "metadata": {"name": "echoer", "namespace": "default"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "echoer"}},
            "template": {
                "metadata": {"labels": {"app": "echoer"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "echo from $(hostname); exec sleep 3600"]}],
                },
            },
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(workload))

    def picked() -> subprocess.CompletedProcess[str] | None:
        answer = nexus(cluster, "logs", "workload/echoer")
        return answer if answer.returncode == 0 and answer.stdout.startswith("from echoer-") else None

    answer = eventually(picked, what="a log line from one of the Workload's Instances")
    chosen = answer.stdout.split()[1]
    assert f"using instance/{chosen}" in answer.stderr or answer.stderr == ""
    cluster.kubectl("delete", "workload", "echoer", "-n", "default", "--wait=false")
