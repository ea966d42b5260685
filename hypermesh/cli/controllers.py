"""`hypermesh controllers` and `hypermesh server --controllers`: where the controllers run.

Two ways to run the same `controllers.run_all`:

- alone, against any server, through a kubeconfig (mutual TLS over TCP), with leader election
  on Leases in hypermesh-system so several copies can run and one acts;
- inside the server process, through `AsyncClient.in_process`: the same requests, still through
  authn, authz and admission, as the `system:controllers` identity, without a socket.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

log = logging.getLogger("hypermesh.controllers")

CONTROLLERS_USER = "system:controllers"


async def run_standalone(kubeconfig: str | None, *, leader_election: bool = True) -> int:
    """Run the controllers against the kubeconfig's server until SIGTERM or SIGINT."""
    import controllers
    from hypermesh.client.aio import AsyncClient
    from hypermesh.client.config import load_config

    client = AsyncClient.from_config(load_config(kubeconfig))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("controllers running against %s", client.server)
    print("ready", flush=True)
    try:
        await controllers.run_all(client, stop, leader_election=leader_election)
    finally:
        await client.aclose()
    log.info("controllers stopped")
    return 0


def start_in_process(app: Any, stop: asyncio.Event) -> asyncio.Task[None]:
    """Start the controllers inside the server process as `system:controllers`."""
    import controllers
    from hypermesh.client.aio import AsyncClient
    from hypermesh.pki import Identity

    client = AsyncClient.in_process(app, Identity(CONTROLLERS_USER, ("system:masters",)))
    return asyncio.get_running_loop().create_task(
        controllers.run_all(client, stop, leader_election=True), name="controllers"
    )
