"""`spec.hostUsers: false` through the whole stack: API server, agent, runc (needs the wiring)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hypermesh.runtime import userns
from tests.e2e import agent_harness
from tests.e2e.conftest import Server

pytestmark = [pytest.mark.timeout(180), *agent_harness.REQUIREMENTS]

NODE = "agent-userns"
NODE_SPEC = agent_harness.AgentNode(NODE, f"hmu{os.getpid() % 10000}", f"fd{(os.getpid() + 7) % 256:02x}:ae2::/48")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    with agent_harness.running_cluster(tmp_path_factory.mktemp("userns"), NODE_SPEC) as pair:
        yield pair


def test_an_instance_without_host_users(cluster: tuple[Server, Path]) -> None:
    server, agent_dir = cluster
    script = "cat /proc/self/uid_map; id -u; echo x > /etc/x && echo etc ok; exec httpd -f -p 80 -h /etc"
    server.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "hypermesh.io/v1", "kind": "Instance",
        "metadata": {"name": "ns", "namespace": "default"},
        "spec": {"nodeName": NODE, "hostUsers": False,
                 "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script]}]},
    }))

    def running() -> dict[str, Any] | None:
        item = server.kubectl_json("get", "instance", "ns", "-n", "default")
        return item if (item.get("status") or {}).get("phase") == "Running" else None

    item = agent_harness.eventually(running, what="the Instance to run")
    uid = item["metadata"]["uid"]
    ids = userns.RangePool.for_data_dir(agent_dir).get(uid)
    assert ids is not None
    out = agent_dir / "instances" / uid / "main" / "stdout.log"
    lines = agent_harness.eventually(
        lambda: out.exists() and len(out.read_text().splitlines()) >= 3 and out.read_text().splitlines(),
        what="the container's output",
    )
    assert lines[0].split() == ["0", str(ids.base), "65536"]
    assert lines[1:3] == ["0", "etc ok"]
    # Port 80 served by the namespaced root, reached from the host.
    address = item["status"]["instanceIP"]
    answer = agent_harness.eventually(
        lambda: subprocess.run(["busybox", "wget", "-q", "-O", "-", f"http://[{address}]:80/x"], capture_output=True, text=True).stdout,
        what="httpd to answer",
    )
    assert answer == "x\n"
    server.kubectl("delete", "instance", "ns", "-n", "default")
    agent_harness.eventually(lambda: userns.RangePool.for_data_dir(agent_dir).get(uid) is None, what="the range to be released")
    assert not (agent_dir / "instances" / uid).exists()
    assert "/run/hypermesh/rootfs/" not in Path("/proc/self/mountinfo").read_text()
