"""A real server with its controllers and a real `hypermesh agent` process, for the agent's tests.

Each test module gets its own node name, bridge and ULA prefix, so several can run in one pytest
session. Teardown deletes every Instance, lets the agent stop and clean up what it ran, then
sweeps whatever is left (containers, overlay mounts, network namespaces, the bridge), so a failed
test never leaves anything on the machine.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv6Network
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import VENV_BIN, Server, free_port

# The marks every agent test module carries.
REQUIREMENTS = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the node agent needs root (runc, mounts, network namespaces)"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed (make setup installs it)"),
]


def eventually(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy (returned), failing after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not reached in {timeout:.0f}s"
        time.sleep(0.3)


@dataclass(frozen=True)
class AgentNode:
    """Where one test module's node lives."""

    name: str
    bridge: str
    prefix: str


@contextlib.contextmanager
def running_cluster(base: Path, node: AgentNode) -> Iterator[tuple[Server, Path]]:
    """A server (controllers on) and an agent for `node`; yields (server, agent data dir)."""
    server = Server(base / "data", free_port(), controllers=True)
    server.start()
    agent_dir = base / "agent"
    log_path = base / "agent.log"
    with open(log_path, "a") as log:
        agent = subprocess.Popen(
            [str(VENV_BIN / "hypermesh"), "agent", "--kubeconfig", str(server.kubeconfig), "--name", node.name,
             "--data-dir", str(agent_dir), "--bridge", node.bridge, "--cluster-prefix", node.prefix],
            stdout=subprocess.PIPE, stderr=log, text=True,
        )
    assert agent.stdout is not None
    line = agent.stdout.readline().strip()
    assert line == "ready", log_path.read_text()
    try:
        yield server, agent_dir
    finally:
        server.kubectl("delete", "workloads,instances", "--all", "-n", "default", "--wait=false", check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any((agent_dir / "instances").glob("*")):
            time.sleep(0.3)
        agent.terminate()
        agent.wait(20)
        server.stop()
        sweep(agent_dir, node)


def sweep(agent_dir: Path, node: AgentNode) -> None:
    """Remove every container, mount and network namespace under `agent_dir` (test hygiene)."""
    from hypermesh.runtime import network, rootfs
    from hypermesh.runtime.agent import node_prefix

    root = agent_dir / "oci" / "runc"
    listing = subprocess.run(["runc", "--root", str(root), "list", "-q"], capture_output=True, text=True)
    for cid in listing.stdout.split():
        subprocess.run(["runc", "--root", str(root), "delete", "--force", cid], capture_output=True)
    for workdir in (agent_dir / "instances").glob("*/*"):
        rootfs.unmount_rootfs(workdir)
    state = agent_dir / "network"
    if state.exists():
        prefix = str(node_prefix(IPv6Network(node.prefix), node.name, None))
        manager = network.NetworkManager(network.NodeNetwork.for_prefix(prefix, bridge=node.bridge), state)
        manager.cleanup_orphans(keep=set())
    subprocess.run(["ip", "link", "delete", node.bridge], capture_output=True)
