"""`hypermesh agent` and the local agent of `hypermesh up`: where a node agent runs.

Alone, the agent reaches the server through a kubeconfig (mutual TLS); inside `hypermesh up` it
runs in the server's process through `AsyncClient.in_process` as `system:node:<name>`, so a
one-machine cluster is one process. Either way the containers it starts outlive it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
from pathlib import Path
from typing import Any

log = logging.getLogger("hypermesh.agent")


def default_name() -> str:
    """The node name: the host name, lower-cased, as kubelet uses."""
    return socket.gethostname().split(".")[0].lower() or "node"


def can_run_containers() -> str | None:
    """None when this process can run containers, else why not."""
    if os.geteuid() != 0:
        return "the node agent needs root (runc, mounts and network namespaces)"
    return None


async def run_standalone(
    kubeconfig: str | None,
    *,
    name: str,
    data_dir: Path,
    zone: str | None,
    oci_runtime: str | None,
    bridge: str = "hm0",
    cluster_prefix: str | None = None,
) -> int:
    """Run one agent against the kubeconfig's server until SIGTERM or SIGINT."""
    from hypermesh.client.aio import AsyncClient
    from hypermesh.client.config import load_config
    from hypermesh.runtime.agent import Agent, AgentSettings

    problem = can_run_containers()
    if problem:
        log.error("%s", problem)
        return 1
    client = AsyncClient.from_config(load_config(kubeconfig))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    settings = AgentSettings(node_name=name, data_dir=data_dir, zone=zone, oci_runtime=oci_runtime, bridge=bridge)
    if cluster_prefix:
        settings = dataclasses.replace(settings, cluster_prefix=cluster_prefix)
    agent = Agent(client, settings)
    task = asyncio.create_task(agent.run(stop))
    ready = asyncio.create_task(agent.ready.wait())
    done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if ready in done:
        print("ready", flush=True)
    try:
        await task
    finally:
        ready.cancel()
        await client.aclose()
    log.info("agent stopped")
    return 0


def start_in_process(app: Any, stop: asyncio.Event, *, data_dir: Path) -> asyncio.Task[None] | None:
    """Start a local agent inside the server process (for `hypermesh up`); None if this process
    cannot run containers (said in the log)."""
    from hypermesh.client.aio import AsyncClient
    from hypermesh.pki import Identity
    from hypermesh.runtime.agent import Agent, AgentSettings

    problem = can_run_containers()
    if problem:
        log.warning("%s: running without a local node", problem)
        return None
    name = default_name()
    client = AsyncClient.in_process(app, Identity(f"system:node:{name}", ("system:nodes",)))
    agent = Agent(client, AgentSettings(node_name=name, data_dir=data_dir / "agent"))
    return asyncio.get_running_loop().create_task(agent.run(stop), name="agent")
