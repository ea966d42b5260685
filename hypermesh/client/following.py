"""Keep a long-running client's certificate in step with its kubeconfig file.

The server rewrites `admin.kubeconfig` with a fresh client certificate every day (and a joined
node rewrites its own). kubectl and nexus read the file at every run, but a process that read
it once at start (`hypermesh controllers`, `hypermesh simulate-nodes`, an agent given a
kubeconfig, an operator) would present an expired certificate a day later. `follow_kubeconfig`
looks at the file every few seconds and, when the certificate in it changed, swaps it into the
running client: new connections present the new one, connections in use finish on the old.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from hypermesh.client.aio import AsyncClient
from hypermesh.client.config import ConfigError, load_config
from hypermesh.client.errors import ClientError

log = logging.getLogger(__name__)

CHECK_INTERVAL = 5.0


def kubeconfig_path(kubeconfig: str | None) -> Path | None:
    """The one file a client was configured from, when there is exactly one to follow."""
    if kubeconfig:
        return Path(kubeconfig)
    env = os.environ.get("KUBECONFIG", "")
    return Path(env) if env and os.pathsep not in env else None


async def follow_kubeconfig(client: AsyncClient, path: Path, stop: asyncio.Event, *, interval: float = CHECK_INTERVAL) -> None:
    """Until `stop`: when `path` holds a different client certificate, use it from now on."""
    seen = _mtime(path)
    transport_config = getattr(client.transport, "config", None)
    current = getattr(transport_config, "cert_pem", None)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        mtime = _mtime(path)
        if mtime == seen:
            continue
        seen = mtime
        try:
            config = await asyncio.to_thread(load_config, str(path))
        except (OSError, ValueError, ConfigError, ClientError) as exc:
            log.warning("cannot read %s again (keeping the certificate in use): %s", path, exc)
            continue
        if config.cert_pem and config.key_pem and config.cert_pem != current:
            try:
                client.use_client_certificate(config.cert_pem, config.key_pem)
            except ClientError as exc:
                log.warning("the new certificate in %s cannot be used (keeping the old): %s", path, exc)
                continue
            current = config.cert_pem
            log.info("using the renewed client certificate from %s", path)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def following_task(client: AsyncClient, kubeconfig: str | None, stop: asyncio.Event) -> asyncio.Task[None] | None:
    """Start following the file `kubeconfig` names (or $KUBECONFIG's one file); None when the
    configuration came from several files or none."""
    path = kubeconfig_path(kubeconfig)
    if path is None:
        return None
    return asyncio.get_running_loop().create_task(follow_kubeconfig(client, path, stop), name="kubeconfig-follower")
