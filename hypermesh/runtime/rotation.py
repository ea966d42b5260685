"""A joined node renews its own client certificate, with no restart and no failed request.

At two thirds of its certificate's lifetime (cert-manager's and HyperMesh's rule, see
`hypermesh.pki.renewal`) the agent asks for a new one exactly as it joined (`join`), but
authenticated by the certificate it still holds: the API server stamps it as the requester, the
approver signs a node's request for its own name only. The new certificate and its fresh key
replace `<data dir>/kubeconfig` atomically first (a restart from then on uses them), and then
the running client, whose next connections present the new certificate while the connections
already in use (the Instances' watch, a request under way) finish on the old one, which is
still valid. Nothing waits and nothing is retried because of the switch.

A failed renewal (server unreachable, request denied) is retried 2 s later, doubling up to 5
minutes, until it succeeds: the old certificate stays in use meanwhile, and the log says how
long it has left.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from pathlib import Path

from hypermesh.client.aio import AsyncClient
from hypermesh.client.errors import ClientError
from hypermesh.pki import csr, renewal
from hypermesh.runtime import join

log = logging.getLogger(__name__)


class CertificateRotation:
    """Keeps one node's client certificate fresh, in its kubeconfig and in its client."""

    def __init__(
        self,
        client: AsyncClient,
        credentials: join.NodeCredentials,
        *,
        node_name: str,
        path: Path,
        retry_base: float = 2.0,
        retry_cap: float = 300.0,
    ) -> None:
        self.client = client
        self.credentials = credentials
        self.node_name = node_name
        self.path = path
        self.retry_base = retry_base
        self.retry_cap = retry_cap

    def renewal_time(self) -> datetime.datetime:
        """When the current certificate is due for renewal."""
        return renewal.renewal_time(self.credentials.not_before, self.credentials.not_after, None)

    async def run(self, stop: asyncio.Event) -> None:
        """Renew on time until `stop` is set."""
        failures = 0
        while not stop.is_set():
            if failures:
                delay = min(self.retry_cap, self.retry_base * 2 ** min(failures - 1, 16))
            else:
                delay = (self.renewal_time() - datetime.datetime.now(datetime.UTC)).total_seconds()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    return
            try:
                await self.renew()
            except (join.JoinError, ClientError) as exc:
                failures += 1
                left = self.credentials.not_after - datetime.datetime.now(datetime.UTC)
                log.warning("renewing the client certificate of %s failed (%s); the current one has %s left",
                            join.node_user(self.node_name), exc, _left(left))  # fmt: skip
            else:
                failures = 0

    async def renew(self) -> join.NodeCredentials:
        """Get a new certificate now; keep it on disk, then use it for new connections."""
        old = self.credentials
        chain_pem, key_pem, name = await join.request_certificate(
            self.client, self.node_name, credential=f"client certificate (serial {old.certificate.serial_number:x})"
        )
        new = join.NodeCredentials(old.server, old.ca_pem, chain_pem, key_pem, csr.load_chain(chain_pem)[0])
        join.write_credentials(self.path, new, self.node_name)
        self.client.use_client_certificate(chain_pem, key_pem)
        self.credentials = new
        log.info("renewed the client certificate of %s (request %s): serial %x until %s replaces serial %x; "
                 "new connections use it", join.node_user(self.node_name), name, new.certificate.serial_number,
                 new.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"), old.certificate.serial_number)  # fmt: skip
        return new


def _left(delta: datetime.timedelta) -> str:
    seconds = delta.total_seconds()
    return "nothing (it expired)" if seconds <= 0 else renewal.format_duration(datetime.timedelta(seconds=int(seconds)))
