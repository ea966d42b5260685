"""Joining a cluster: from a bootstrap token and a CA hash to a node certificate of one's own.

`hypermesh agent --server URL --token T --ca-hash sha256:...` does what kubeadm's join and
kubelet's TLS bootstrap do together:

1. Discover the CA. The node trusts nothing yet, so it fetches the cluster CA from the public
   `CA_PATH` over TLS without verification and keeps it only if the SHA-256 of its public key
   is the `--ca-hash` it was given out of band; any other CA is refused before anything is
   written or any secret sent. From then on every connection verifies the server against it.
2. Ask for a certificate. With the bootstrap token as its bearer credential, the node sends a
   CertificateSigningRequest for a key it just made (ECDSA P-256), subject
   `CN=system:node:<name>, O=system:nodes`, signer `kubernetes.io/kube-apiserver-client-kubelet`,
   and waits until the cluster approves and signs it (or refuses, which ends the join with the
   reason).
3. Keep it. The certificate, its chain, the key and the CA go into `<data dir>/kubeconfig`
   (mode 0600, written atomically): a standard kubeconfig, which a restarted agent reuses while
   its certificate is valid, without the token (which is short-lived on purpose).

The same request-and-wait serves renewals (`rotation`), authenticated by the current
certificate instead of the token. The token's secret half is never logged.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from hypermesh.client.aio import AsyncClient
from hypermesh.client.config import ClusterConfig, ConfigError, load_config
from hypermesh.client.errors import ApiError, ClientError
from hypermesh.client.kinds import CSRS
from hypermesh.pki import bootstraptoken, csr, files, keys
from hypermesh.pki.ca import cert_to_pem
from hypermesh.pki.kubeconfig import write_kubeconfig

log = logging.getLogger(__name__)

KUBECONFIG_NAME = "kubeconfig"
FIELD_MANAGER = "hypermesh-agent"
# A kept certificate this close to its expiry (or a tenth of its lifetime, if that is less) is
# not worth starting with: join again instead.
_MIN_LEFT = datetime.timedelta(seconds=5)


class JoinError(Exception):
    """Joining (or renewing) cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class NodeCredentials:
    """What a joined node holds: the server, the CA it trusts, its certificate chain and key."""

    server: str
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    certificate: x509.Certificate

    @property
    def not_before(self) -> datetime.datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    def config(self, source: Path) -> ClusterConfig:
        """The client configuration that authenticates with these credentials."""
        return ClusterConfig(
            server=self.server, ca_pem=self.ca_pem, cert_pem=self.cert_pem, key_pem=self.key_pem,
            namespace="default", context="hypermesh", cluster="hypermesh",
            user=csr.subject_parts(self.certificate)[0], source=source,
        )  # fmt: skip


def kubeconfig_path(data_dir: Path) -> Path:
    """Where a joined node keeps its credentials."""
    return data_dir / KUBECONFIG_NAME


def node_user(node_name: str) -> str:
    return csr.NODE_USER_PREFIX + node_name


def write_credentials(path: Path, credentials: NodeCredentials, node_name: str) -> None:
    """Replace the kubeconfig at `path` (0600, atomically: a reader sees the old or the new)."""
    files.ensure_private_dir(path.parent)
    write_kubeconfig(
        path, server_url=credentials.server, ca_pem=credentials.ca_pem, cert_pem=credentials.cert_pem,
        key_pem=credentials.key_pem, user=node_user(node_name),
    )  # fmt: skip


def read_credentials(path: Path, node_name: str) -> tuple[NodeCredentials | None, str]:
    """The credentials kept at `path` if they are usable for `node_name` now; else (None, why)."""
    if not path.exists():
        return None, f"{path} does not exist (this node has not joined yet)"
    try:
        config = load_config(str(path))
    except ConfigError as exc:
        return None, str(exc)
    if not config.cert_pem or not config.key_pem:
        return None, f"{path} holds no client certificate"
    try:
        chain = csr.load_chain(config.cert_pem)
        key = keys.load_pem(config.key_pem, source=str(path))
    except ValueError as exc:
        return None, f"{path}: {exc}"
    leaf = chain[0]
    if key.public_key() != leaf.public_key():
        return None, f"{path}: the key does not belong to the certificate"
    user = csr.subject_parts(leaf)[0]
    if user != node_user(node_name):
        return None, f"{path} holds the certificate of {user!r}, not of {node_user(node_name)!r}"
    margin = min(_MIN_LEFT, (leaf.not_valid_after_utc - leaf.not_valid_before_utc) / 10)
    left = leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    if left < margin:
        when = f"{leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
        return None, f"the certificate in {path} {'expired at ' + when if left <= datetime.timedelta(0) else 'expires at ' + when + ', too soon to start with'}"
    return NodeCredentials(config.server, config.ca_pem, config.cert_pem, config.key_pem, leaf), ""


async def discover_ca(server: str, ca_hash: str, *, timeout: float = 10.0) -> bytes:
    """The cluster CA (PEM) that `server` publishes, if its public key hashes to `ca_hash`."""
    config = ClusterConfig(
        server=server, ca_pem=b"", cert_pem=None, key_pem=None, namespace="default", context="join",
        cluster="join", user="", source=Path("--server"), insecure=True,
    )  # fmt: skip
    client = AsyncClient.from_config(config, pool_size=1, timeout=timeout)
    try:
        _, _, body = await client.request("GET", csr.CA_PATH, accept="application/x-pem-file")
    except ApiError as exc:
        raise JoinError(f"{server} does not publish a cluster CA at {csr.CA_PATH} ({exc.status}: {exc}); is it a HyperMesh API server?") from None
    except ClientError as exc:
        raise JoinError(f"cannot fetch the cluster CA from {server}: {exc}") from None
    finally:
        await client.aclose()
    try:
        ca = csr.load_chain(body)[0]
    except ValueError:
        raise JoinError(f"{server}{csr.CA_PATH} did not answer with a PEM certificate") from None
    if not csr.matches_ca_hash(ca, ca_hash):
        raise JoinError(
            f"refusing the cluster CA of {server}: its public key hash is {csr.spki_hash(ca)}, but --ca-hash "
            f"is {ca_hash}; check the hash `hypermesh token create` printed, and that {server} is that cluster"
        )
    return cert_to_pem(ca)


async def request_certificate(
    client: AsyncClient, node_name: str, *, credential: str, timeout: float = 600.0
) -> tuple[bytes, bytes, str]:
    """Ask the cluster for a node client certificate for a new key and wait for it; `credential`
    names what the client authenticates with, for messages.

    Returns (chain PEM, key PEM, the request's name); JoinError when it is denied, fails, does
    not come within `timeout` seconds or is not what was asked for."""
    key = keys.generate()
    request_pem = csr.build_request(key, node_user(node_name), [csr.NODES_GROUP])
    body: dict[str, Any] = {
        "apiVersion": CSRS.api_version,
        "kind": CSRS.kind,
        "metadata": {"generateName": "node-csr-"},
        "spec": {
            "request": base64.b64encode(request_pem).decode(),
            "signerName": csr.NODE_CLIENT_SIGNER,
            "usages": list(csr.NODE_CLIENT_USAGES),
        },
    }
    try:
        created = await client.create(CSRS, body, field_manager=FIELD_MANAGER)
    except ApiError as exc:
        if exc.status == 401:
            raise JoinError(f"{client.server} did not accept the {credential} (401 Unauthorized): it is unknown, expired or deleted") from None
        raise JoinError(f"{client.server} refused the certificate request ({exc.status} {exc.reason}): {exc}") from None
    name = str(created["metadata"]["name"])
    log.info("sent certificate request %s for %s; waiting for it to be approved and signed", name, node_user(node_name))
    deadline = time.monotonic() + timeout
    pause = 0.2
    while True:
        try:
            current = await client.get(CSRS, name)
        except ApiError as exc:
            raise JoinError(f"cannot read certificate request {name} ({exc.status} {exc.reason}): {exc}") from None
        status = current.get("status") or {}
        for condition in status.get("conditions") or []:
            if condition.get("type") in ("Denied", "Failed") and condition.get("status") == "True":
                verb = "denied" if condition["type"] == "Denied" else "failed"
                raise JoinError(f"certificate request {name} was {verb} ({condition.get('reason')}): {condition.get('message')}")
        if status.get("certificate"):
            break
        if time.monotonic() > deadline:
            raise JoinError(
                f"certificate request {name} was neither approved nor denied within {timeout:.0f}s; an administrator "
                "can approve it by adding the Approved condition through its status"
            )
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, 2.0)
    try:
        chain_pem = base64.b64decode(status["certificate"], validate=True)
        leaf = csr.load_chain(chain_pem)[0]
    except ValueError as exc:
        raise JoinError(f"certificate request {name} carries an unreadable certificate: {exc}") from None
    if leaf.public_key() != key.public_key():
        raise JoinError(f"the certificate issued for request {name} is not for this node's key")
    if csr.subject_parts(leaf) != (node_user(node_name), (csr.NODES_GROUP,)):
        raise JoinError(f"the certificate issued for request {name} names {leaf.subject.rfc4514_string()}, not this node")
    return chain_pem, keys.to_pem(key), name


async def join(server: str, token: str, ca_hash: str, node_name: str, data_dir: Path) -> NodeCredentials:
    """Discover the CA, get a node certificate with the bootstrap token, keep it in the data dir."""
    try:
        parsed = bootstraptoken.BootstrapToken.parse(token)
    except bootstraptoken.TokenFormatError as exc:
        raise JoinError(f"--token: {exc}") from None
    try:
        expected = csr.parse_ca_hash(ca_hash)
    except ValueError as exc:
        raise JoinError(f"--ca-hash: {exc}") from None
    server = server.rstrip("/")
    ca_pem = await discover_ca(server, expected)
    log.info("the cluster CA of %s matches %s; joining as %s with bootstrap token %s", server, expected, node_user(node_name), parsed.id)
    path = kubeconfig_path(data_dir)
    config = ClusterConfig(
        server=server, ca_pem=ca_pem, cert_pem=None, key_pem=None, namespace="default", context="join",
        cluster="hypermesh", user=parsed.user, source=path, token=str(parsed),
    )  # fmt: skip
    client = AsyncClient.from_config(config)
    try:
        chain_pem, key_pem, name = await request_certificate(client, node_name, credential=f"bootstrap token {parsed.id}")
    except ClientError as exc:
        raise JoinError(f"joining {server} failed: {exc}") from None
    finally:
        await client.aclose()
    credentials = NodeCredentials(server, ca_pem, chain_pem, key_pem, csr.load_chain(chain_pem)[0])
    write_credentials(path, credentials, node_name)
    log.info("joined %s as %s (request %s); certificate valid until %s, kept in %s", server, node_user(node_name), name,
             credentials.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"), path)  # fmt: skip
    return credentials


async def credentials(*, server: str | None, token: str | None, ca_hash: str | None, node_name: str, data_dir: Path) -> NodeCredentials:
    """The node's credentials: the kept ones while they are valid (and for `server`, when
    given), else a fresh join, which needs the token and the CA hash."""
    path = kubeconfig_path(data_dir)
    kept, problem = read_credentials(path, node_name)
    if kept is not None and server is not None and kept.server != server.rstrip("/"):
        problem = f"{path} is for {kept.server}, not {server.rstrip('/')}"
        kept = None
    if kept is not None:
        log.info("using the credentials in %s (%s until %s)", path, node_user(node_name), kept.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"))
        return kept
    if server is None or token is None:
        raise JoinError(f"{problem}; to join a cluster pass --server, --token and --ca-hash (`hypermesh token create` prints them)")
    if ca_hash is None:
        raise JoinError(
            "--ca-hash is required with --token: it is how this node knows the CA it fetches is the cluster's "
            "(`hypermesh token create` prints the whole join command)"
        )
    return await join(server, token, ca_hash, node_name, data_dir)
