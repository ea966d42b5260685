"""`hypermesh agent` and the local agent of `hypermesh up`: where a node agent runs.

Alone, the agent reaches the server over mutual TLS in one of two ways:

- joined (`--server URL --token T --ca-hash sha256:...`, see `hypermesh.runtime.join`): it gets
  its own node certificate with a bootstrap token, keeps it in `<data dir>/kubeconfig`, reuses it
  when restarted (no token needed while it is valid) and renews it itself
  (`hypermesh.runtime.rotation`);
- given a kubeconfig (`--kubeconfig K`): it runs as whoever that names, and renews nothing.

Inside `hypermesh up` it runs in the server's process through `AsyncClient.in_process` as
`system:node:<name>`, so a one-machine cluster is one process. Either way the containers it
starts outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
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


@dataclasses.dataclass(frozen=True)
class JoinOptions:
    """`--server`, `--token`, `--ca-hash`: how to join (each may be unset on a restart)."""

    server: str | None = None
    token: str | None = dataclasses.field(default=None, repr=False)
    ca_hash: str | None = None

    @property
    def given(self) -> bool:
        return bool(self.server or self.token or self.ca_hash)


async def run_standalone(
    kubeconfig: str | None,
    *,
    name: str,
    data_dir: Path,
    zone: str | None,
    oci_runtime: str | None,
    bridge: str = "hm0",
    cluster_prefix: str | None = None,
    joining: JoinOptions | None = None,
) -> int:
    """Run one agent until SIGTERM or SIGINT: joined (see the module docstring) when `joining`
    says how or the data dir holds a joined node's kubeconfig, else with `kubeconfig`."""
    from hypermesh.client.aio import AsyncClient
    from hypermesh.client.config import ConfigError, load_config
    from hypermesh.runtime import join, rotation
    from hypermesh.runtime.agent import Agent, AgentSettings

    problem = can_run_containers()
    if problem:
        log.error("%s", problem)
        return 1
    joining = joining or JoinOptions()
    if kubeconfig and joining.given:
        log.error("--kubeconfig runs the agent with given credentials; --server, --token and --ca-hash join with its own: use one or the other")
        return 2
    rotator: rotation.CertificateRotation | None = None
    if kubeconfig is None and (joining.given or join.kubeconfig_path(data_dir).exists()):
        try:
            credentials = await join.credentials(
                server=joining.server, token=joining.token, ca_hash=joining.ca_hash, node_name=name, data_dir=data_dir
            )
        except join.JoinError as exc:
            log.error("cannot join: %s", exc)
            return 1
        path = join.kubeconfig_path(data_dir)
        client = AsyncClient.from_config(credentials.config(path))
        rotator = rotation.CertificateRotation(client, credentials, node_name=name, path=path)
    else:
        try:
            client = AsyncClient.from_config(load_config(kubeconfig))
        except ConfigError as exc:
            log.error("%s", exc)
            return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    settings = AgentSettings(node_name=name, data_dir=data_dir, zone=zone, oci_runtime=oci_runtime, bridge=bridge)
    if cluster_prefix:
        settings = dataclasses.replace(settings, cluster_prefix=cluster_prefix)
    agent = Agent(client, settings)
    renewing: asyncio.Task[None] | None
    if rotator is not None:
        renewing = asyncio.create_task(rotator.run(stop), name="certificate-rotation")
    else:
        from hypermesh.client.following import following_task

        # Given a kubeconfig: follow the certificate in it (admin.kubeconfig is renewed daily).
        renewing = following_task(client, kubeconfig, stop)
    task = asyncio.create_task(agent.run(stop))
    ready = asyncio.create_task(agent.ready.wait())
    done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if ready in done:
        print("ready", flush=True)
    try:
        await task
    finally:
        ready.cancel()
        if renewing is not None:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
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
