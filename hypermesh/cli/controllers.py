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
import os
import signal
from pathlib import Path
from typing import Any

log = logging.getLogger("hypermesh.controllers")

CONTROLLERS_USER = "system:controllers"


async def run_standalone(kubeconfig: str | None, *, leader_election: bool = True) -> int:
    """Run the controllers against the kubeconfig's server until SIGTERM or SIGINT."""
    import controllers
    from hypermesh.client.aio import AsyncClient
    from hypermesh.client.config import load_config
    from hypermesh.client.following import following_task

    client = AsyncClient.from_config(load_config(kubeconfig))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("controllers running against %s", client.server)
    print("ready", flush=True)
    following = following_task(client, kubeconfig, stop)
    try:
        await controllers.run_all(client, stop, leader_election=leader_election)
    finally:
        if following is not None:
            following.cancel()
        await client.aclose()
    log.info("controllers stopped")
    return 0


def start_in_process(app: Any, stop: asyncio.Event, *, pki_dir: Path | None = None) -> asyncio.Task[None]:
    """Start the controllers inside the server process as `system:controllers`; with
    `pki_dir`, the certificates and csrsigning controllers too (they sign with the intermediate
    CA there)."""
    import controllers
    from controllers.certificates import CertificateSettings
    from controllers.csrsigning import CSRSigningSettings
    from hypermesh.client.aio import AsyncClient
    from hypermesh.pki import Identity, Signer, renewal
    from hypermesh.pki.intent import Policy

    client = AsyncClient.in_process(app, Identity(CONTROLLERS_USER, ("system:masters",)))
    certificates = csrsigning = None
    if pki_dir is not None:
        signer = Signer.from_directory(pki_dir)
        # Tests shorten the shortest lifetime a Certificate may ask for; users keep cert-manager's 1h.
        minimum = renewal.parse_duration(os.environ.get("HYPERMESH_CERTIFICATE_MIN_DURATION", "1h"))
        certificates = CertificateSettings(signer=signer, policy=Policy(min_duration=minimum))
        # Node client certificates live a day (nodes renew them at two thirds); tests use seconds.
        node_duration = renewal.parse_duration(os.environ.get("HYPERMESH_NODE_CERTIFICATE_DURATION", "24h"))
        csrsigning = CSRSigningSettings(signer=signer, max_duration=node_duration)
    from controllers.gitsync import GitSyncSettings

    # Git caches of GitSyncs live beside the state, in <data dir>/gitops (pki_dir is <data dir>/pki).
    gitsync = GitSyncSettings(data_dir=pki_dir.parent / "gitops" if pki_dir is not None else None)
    settings = controllers.ControllerSettings(certificates=certificates, csrsigning=csrsigning, gitsync=gitsync)
    return asyncio.get_running_loop().create_task(
        controllers.run_all(client, stop, settings=settings, leader_election=True), name="controllers"
    )
