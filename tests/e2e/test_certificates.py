"""The Certificate kind end to end: issued into a TLS Secret that chains to the cluster root,
renewed on time, re-issued when the Secret goes or is tampered with, when the spec changes and
when the intermediate is rotated; bad specs get precise errors; failures back off.

The main tests run a real `hypermesh server` (controllers on) and drive the certificates
controller in this process against it, over mutual TLS, with the server's own
`<data dir>/pki` as the CA (as the server will do once the controller is registered there).
The controller watches only the test's namespace, so tests do not see each other's objects.
The failure test uses an in-process API server, where the CA can be missing on purpose.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509 import verification

import controllers
from controllers.certificates import (
    CERTIFICATES,
    SECRETS,
    SPEC_HASH_ANNOTATION,
    CertificateSettings,
    setup,
)
from hypermesh.api.app import APIServer
from hypermesh.client.aio import AsyncClient
from hypermesh.client.config import load_config
from hypermesh.client.errors import ApiError
from hypermesh.operator import InformerSettings, Operator, Settings, get_condition
from hypermesh.operator.events import EVENTS
from hypermesh.pki import CertificateAuthority, Identity, Signer, hierarchy
from hypermesh.pki.intent import Policy
from hypermesh.store import MemoryStore
from tests.e2e.conftest import Server, free_port

pytestmark = pytest.mark.timeout(120)

FAST = InformerSettings(watch_timeout=30, stall_timeout=15.0, backoff_base=0.05, backoff_cap=0.5)
POLICY = Policy(trust_domain="cluster.local", min_duration=datetime.timedelta(seconds=1))
OPENSSL = shutil.which("openssl")
# Once the lead registers the controller in the server (ControllerSettings.certificates), the
# server's own copy does the work and the tests must not start a second one.
IN_SERVER = any(
    f.name == "certificates" for f in dataclasses.fields(controllers.ControllerSettings)
)


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with its controllers on (this module's `namespace` fixture uses it too)."""
    srv = Server(
        tmp_path_factory.mktemp("certs") / "data",
        free_port(),
        controllers=True,
        # For the server's own certificates controller, once registered: allow 6 s lifetimes.
        env={"HYPERMESH_CERTIFICATE_MIN_DURATION": "1s"},
    )
    srv.start()
    try:
        yield srv
    finally:
        code = srv.stop()
        assert code == 0, srv.log_path.read_text() if srv.log_path else ""


async def _run_controller(
    client: AsyncClient, settings: CertificateSettings, namespace: str | None
) -> tuple[asyncio.Event, asyncio.Task[None]]:
    op = Operator(
        client, name="certificates-e2e", namespace=namespace, settings=Settings(informers=FAST)
    )
    setup(op, settings)
    stop = asyncio.Event()
    return stop, asyncio.create_task(op.run(stop))


async def _stop(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    try:
        await asyncio.wait_for(task, 10)
    except TimeoutError:
        task.cancel()


@pytest.fixture
async def client(server: Server, namespace: str) -> AsyncIterator[AsyncClient]:
    """An admin client of the server, with the certificates controller running beside it."""
    admin = AsyncClient.from_config(load_config(str(server.kubeconfig)))
    settings = CertificateSettings(
        signer=Signer.from_directory(server.data_dir / "pki"), policy=POLICY, backoff_base=1.0
    )
    running = None if IN_SERVER else await _run_controller(admin, settings, namespace)
    try:
        yield admin
    finally:
        if running is not None:
            await _stop(*running)
        await admin.aclose()


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 30.0, what: str = "condition"
) -> Any:
    """Poll `check` until it returns something truthy; return that."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, f"{what} not reached in {timeout}s"
        await asyncio.sleep(0.1)


def certificate(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hypermesh.io/v1",
        "kind": "Certificate",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"secretName": f"{name}-tls", **spec},
    }


async def ready(
    client: AsyncClient, name: str, namespace: str, revision: int = 1
) -> dict[str, Any]:
    """Wait until the Certificate is Ready at `revision` (or later); return it."""

    async def check() -> dict[str, Any] | None:
        obj = await client.get(CERTIFICATES, name, namespace)
        condition = get_condition(obj, "Ready") or {}
        status = obj.get("status") or {}
        if condition.get("status") == "True" and int(status.get("revision") or 0) >= revision:
            return obj
        return None

    return await eventually(check, what=f"{name} Ready at revision {revision}")


def data(secret: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(secret["data"][key])


def verify_chain(secret: dict[str, Any], ca_pem: bytes, dns_name: str) -> x509.Certificate:
    """The Secret's leaf, after checking it chains to `ca_pem` (as of its own notBefore, so a
    short-lived certificate does not expire between issuance and this check)."""
    assert data(secret, "ca.crt") == ca_pem
    leaf, *chain = x509.load_pem_x509_certificates(data(secret, "tls.crt"))
    assert len(chain) == 1, "tls.crt holds the leaf and the intermediate"
    at = leaf.not_valid_before_utc + datetime.timedelta(seconds=1)
    store = verification.Store(x509.load_pem_x509_certificates(ca_pem))
    verifier = (
        verification.PolicyBuilder()
        .store(store)
        .time(at)
        .build_server_verifier(x509.DNSName(dns_name))
    )
    verifier.verify(leaf, chain)
    return leaf


def sans(cert: x509.Certificate) -> tuple[list[str], list[str], list[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        san.get_values_for_type(x509.DNSName),
        [str(ip) for ip in san.get_values_for_type(x509.IPAddress)],
        san.get_values_for_type(x509.UniformResourceIdentifier),
    )


async def reasons(client: AsyncClient, name: str, namespace: str) -> set[str]:
    events = await client.list(EVENTS, namespace, field_selector=f"involvedObject.name={name}")
    return {e.get("reason", "") for e in events["items"]}


# -- issued, chained, renewed -------------------------------------------------------------------


async def test_a_certificate_is_issued_and_renewed_on_time(
    client: AsyncClient, server: Server, namespace: str
) -> None:
    dns = f"web.{namespace}.svc"
    spiffe = f"spiffe://cluster.local/ns/{namespace}/sa/web"
    await client.create(
        CERTIFICATES,
        certificate(
            "web",
            namespace,
            dnsNames=[dns],
            ipAddresses=["10.0.0.1"],
            uris=[spiffe],
            usages=["digital signature", "server auth", "client auth"],
            duration="6s",
        ),
    )
    first = await ready(client, "web", namespace)
    status = first["status"]
    assert status["revision"] == 1
    ca_pem = (server.data_dir / "pki" / "ca.crt").read_bytes()

    secret = await client.get(SECRETS, "web-tls", namespace)
    assert secret["type"] == "kubernetes.io/tls"
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "Certificate",
        first["metadata"]["uid"],
        True,
    )
    leaf = verify_chain(secret, ca_pem, dns)
    assert sans(leaf) == ([dns], ["10.0.0.1"], [spiffe])
    assert format(leaf.serial_number, "x") == status["serialNumber"]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == datetime.timedelta(seconds=6)
    # Renewal at two thirds of the lifetime.
    not_before = datetime.datetime.fromisoformat(status["notBefore"])
    renewal = datetime.datetime.fromisoformat(status["renewalTime"])
    assert renewal - not_before == datetime.timedelta(seconds=4)
    assert {"Issuing", "Issued"} <= await reasons(client, "web", namespace)
    if OPENSSL:
        _openssl_verify(server.data_dir, data(secret, "tls.crt"), leaf)

    # Renewed at its renewal time: a new serial, revision 2, the Secret updated.
    second = await ready(client, "web", namespace, revision=2)
    renewed = verify_chain(await client.get(SECRETS, "web-tls", namespace), ca_pem, dns)
    assert renewed.serial_number != leaf.serial_number
    assert second["status"]["serialNumber"] == format(renewed.serial_number, "x")
    assert renewed.not_valid_before_utc >= renewal
    assert sans(renewed) == sans(leaf)


def _openssl_verify(data_dir: Path, chain_pem: bytes, leaf: x509.Certificate) -> None:
    work = data_dir.parent / "openssl"
    work.mkdir(exist_ok=True)
    first_end = chain_pem.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----\n")
    (work / "leaf.pem").write_bytes(chain_pem[:first_end])
    (work / "chain.pem").write_bytes(chain_pem[first_end:])
    at = int(leaf.not_valid_before_utc.timestamp()) + 1
    result = subprocess.run(
        [str(OPENSSL), "verify", "-attime", str(at), "-CAfile", str(data_dir / "pki" / "ca.crt"),
         "-untrusted", str(work / "chain.pem"), str(work / "leaf.pem")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


async def test_a_deleted_or_tampered_secret_is_reissued(
    client: AsyncClient, server: Server, namespace: str
) -> None:
    dns = f"api.{namespace}.svc"
    await client.create(CERTIFICATES, certificate("api", namespace, dnsNames=[dns], duration="1h"))
    await ready(client, "api", namespace)
    ca_pem = (server.data_dir / "pki" / "ca.crt").read_bytes()
    before = await client.get(SECRETS, "api-tls", namespace)

    await client.delete(SECRETS, "api-tls", namespace)

    async def recreated() -> dict[str, Any] | None:
        try:
            secret = await client.get(SECRETS, "api-tls", namespace)
        except ApiError as exc:
            assert exc.status == 404
            return None
        return secret if secret["metadata"]["uid"] != before["metadata"]["uid"] else None

    after = await eventually(recreated, what="the Secret re-created")
    verify_chain(after, ca_pem, dns)
    obj = await ready(client, "api", namespace, revision=2)
    assert obj["status"]["revision"] == 2

    # Tampered: tls.crt swapped for a certificate from another CA.
    foreign, _ = CertificateAuthority.generate().issue("api", dns_names=[dns], server=True)
    tampered = await client.patch(
        SECRETS, "api-tls", namespace,
        {"data": {"tls.crt": base64.b64encode(foreign).decode()}},
    )  # fmt: skip

    async def repaired() -> dict[str, Any] | None:
        secret = await client.get(SECRETS, "api-tls", namespace)
        changed = secret["metadata"]["resourceVersion"] != tampered["metadata"]["resourceVersion"]
        return secret if changed and data(secret, "tls.crt") != foreign else None

    verify_chain(await eventually(repaired, what="the tampered Secret re-issued"), ca_pem, dns)
    await ready(client, "api", namespace, revision=3)


async def test_secret_ownership(client: AsyncClient, namespace: str) -> None:
    """One Secret per Certificate: a second Certificate naming it is told so; a Certificate
    deleted and created again takes its Secret back, with a new certificate (the deletion
    revoked the old one)."""
    await client.create(
        CERTIFICATES, certificate("one", namespace, commonName="one", duration="1h")
    )
    first = await ready(client, "one", namespace)
    twin = certificate("two", namespace, commonName="two", duration="1h")
    twin["spec"]["secretName"] = "one-tls"
    await client.create(CERTIFICATES, twin)

    async def in_use() -> str | None:
        condition = get_condition(await client.get(CERTIFICATES, "two", namespace), "Ready") or {}
        return condition.get("message") if condition.get("reason") == "SecretInUse" else None

    message = await eventually(in_use, what="SecretInUse")
    assert (
        message == 'Secret "one-tls" is controlled by Certificate "one": choose another secretName'
    )

    serial = first["status"]["serialNumber"]
    secret_uid = (await client.get(SECRETS, "one-tls", namespace))["metadata"]["uid"]
    await client.delete(CERTIFICATES, "two", namespace)
    await client.delete(CERTIFICATES, "one", namespace)

    async def gone() -> bool:
        try:
            await client.get(CERTIFICATES, "one", namespace)
        except ApiError as exc:
            return exc.status == 404
        return False

    # Deleting a Certificate revokes what it issued; a finalizer holds it until that is done.
    await eventually(gone, what="Certificate one gone (its serial revoked)")
    await client.create(
        CERTIFICATES, certificate("one", namespace, commonName="one", duration="1h")
    )

    async def adopted() -> dict[str, Any] | None:
        obj = await client.get(CERTIFICATES, "one", namespace)
        secret = await client.get(SECRETS, "one-tls", namespace)
        (owner,) = secret["metadata"]["ownerReferences"]
        ok = (
            owner["uid"] == obj["metadata"]["uid"]
            and (get_condition(obj, "Ready") or {}).get("status") == "True"
        )
        return obj if ok else None

    again = await eventually(adopted, what="the Secret adopted by the new Certificate")
    # The Secret is taken back (unless a garbage collector took it with its first owner;
    # cert-manager keeps it, and so does HyperMesh's collector unless told to track Secrets),
    # but the certificate in it was revoked with its first owner: a new one is issued into it.
    if (await client.get(SECRETS, "one-tls", namespace))["metadata"]["uid"] == secret_uid:
        assert again["status"]["serialNumber"] != serial
        assert {"Revoked"} <= await reasons(client, "one", namespace)


async def test_a_spec_change_reissues(client: AsyncClient, server: Server, namespace: str) -> None:
    await client.create(
        CERTIFICATES, certificate("db", namespace, dnsNames=[f"db.{namespace}.svc"], duration="1h")
    )
    await ready(client, "db", namespace)
    await client.patch(
        CERTIFICATES, "db", namespace,
        {"spec": {"dnsNames": [f"db.{namespace}.svc", f"db-0.{namespace}.svc"],
                  "privateKey": {"algorithm": "Ed25519"}}},
    )  # fmt: skip
    await ready(client, "db", namespace, revision=2)
    secret = await client.get(SECRETS, "db-tls", namespace)
    ca_pem = (server.data_dir / "pki" / "ca.crt").read_bytes()
    leaf = verify_chain(secret, ca_pem, f"db-0.{namespace}.svc")
    assert sans(leaf)[0] == [f"db.{namespace}.svc", f"db-0.{namespace}.svc"]
    assert SPEC_HASH_ANNOTATION in secret["metadata"]["annotations"]


async def test_rotating_the_intermediate_reissues(
    client: AsyncClient, server: Server, namespace: str
) -> None:
    await client.create(
        CERTIFICATES, certificate("mq", namespace, dnsNames=[f"mq.{namespace}.svc"], duration="1h")
    )
    await ready(client, "mq", namespace)
    hypermesh = str(Path(sys.executable).parent / "hypermesh")
    rotated = subprocess.run(
        [hypermesh, "pki", "rotate-intermediate", "--data-dir", str(server.data_dir)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert rotated.returncode == 0, rotated.stderr
    # Nothing about the Certificate changed: the controller notices when it next looks (here,
    # prompted by a label; in production at renewal or on any event).
    await client.patch(CERTIFICATES, "mq", namespace, {"metadata": {"labels": {"poke": "1"}}})
    await ready(client, "mq", namespace, revision=2)
    secret = await client.get(SECRETS, "mq-tls", namespace)
    _, intermediate = x509.load_pem_x509_certificates(data(secret, "tls.crt"))
    current = CertificateAuthority.load(server.data_dir / "pki")
    assert intermediate == current.cert
    verify_chain(secret, (server.data_dir / "pki" / "ca.crt").read_bytes(), f"mq.{namespace}.svc")


# -- bad specs ----------------------------------------------------------------------------------


async def test_bad_specs_get_precise_errors(client: AsyncClient, namespace: str) -> None:
    await client.create(CERTIFICATES, certificate("bad", namespace, uris=["not a uri"]))

    async def refused() -> dict[str, Any] | None:
        obj = await client.get(CERTIFICATES, "bad", namespace)
        condition = get_condition(obj, "Ready") or {}
        return condition if condition.get("reason") == "InvalidSpec" else None

    condition = await eventually(refused, what="InvalidSpec")
    assert condition["status"] == "False"
    assert condition["message"] == (
        'spec.uris[0]: Invalid value: "not a uri": must be an absolute URI without spaces, '
        "such as spiffe://cluster.local/ns/default/sa/web"
    )
    assert "InvalidSpec" in await reasons(client, "bad", namespace)
    with pytest.raises(ApiError) as missing:
        await client.get(SECRETS, "bad-tls", namespace)
    assert missing.value.status == 404

    # Another namespace's workload identity is not this namespace's to claim.
    theft = "spiffe://cluster.local/ns/kube-system/sa/admin"
    await client.create(CERTIFICATES, certificate("theft", namespace, uris=[theft]))

    async def theft_refused() -> str | None:
        condition = get_condition(await client.get(CERTIFICATES, "theft", namespace), "Ready")
        return (
            (condition or {}).get("message")
            if (condition or {}).get("reason") == "InvalidSpec"
            else None
        )

    message = await eventually(theft_refused, what="InvalidSpec for a foreign SPIFFE ID")
    assert (
        f"may only name identities of that namespace (spiffe://cluster.local/ns/{namespace}"
        in message
    )

    # Fixing the spec issues it.
    await client.patch(
        CERTIFICATES, "theft", namespace,
        {"spec": {"uris": [f"spiffe://cluster.local/ns/{namespace}/sa/admin"]}},
    )  # fmt: skip
    await ready(client, "theft", namespace)

    # Shapes the schema knows are refused by the API server itself.
    with pytest.raises(ApiError) as invalid:
        await client.create(CERTIFICATES, certificate("shape", namespace, dnsNames=["bad name!"]))
    assert invalid.value.status == 422
    assert "spec.dnsNames[0]" in invalid.value.message


# -- failures back off ------------------------------------------------------------------------


@pytest.fixture
async def app() -> AsyncIterator[APIServer]:
    server = APIServer(MemoryStore())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_failed_issuance_backs_off_and_recovers(app: APIServer, tmp_path: Path) -> None:
    """A CA that cannot be read fails issuance; attempts are counted and spaced 1 h doubling
    (too long to wait for here, so a spec change, which retries at once, drives the attempts);
    once the CA is there the certificate is issued and the failure record cleared."""
    admin = AsyncClient.in_process(app, Identity("admin", ("system:masters",)))
    # The CA directory does not exist yet.
    settings = CertificateSettings(signer=Signer.from_directory(tmp_path / "pki"), policy=POLICY)
    stop, task = await _run_controller(admin, settings, None)
    try:
        await admin.create(
            CERTIFICATES,
            certificate("late", "default", dnsNames=["late.default.svc"], duration="1h"),
        )

        async def failed(attempts: int) -> dict[str, Any] | None:
            obj = await admin.get(CERTIFICATES, "late", "default")
            status = obj.get("status") or {}
            return obj if status.get("failedIssuanceAttempts") == attempts else None

        obj = await eventually(lambda: failed(1), what="one failed attempt")
        issuing = get_condition(obj, "Issuing") or {}
        assert (issuing["status"], issuing["reason"]) == ("False", "Failed")
        assert "next try in 1h0m0s" in issuing["message"]
        assert "cannot load the issuing CA" in issuing["message"]
        assert obj["status"]["lastFailureTime"]
        assert (get_condition(obj, "Ready") or {}).get("reason") == "DoesNotExist"
        assert "Failed" in await reasons(admin, "late", "default")

        # Backing off: looking again (a label change) does not retry.
        await admin.patch(CERTIFICATES, "late", "default", {"metadata": {"labels": {"a": "1"}}})
        await asyncio.sleep(1.0)
        still = await admin.get(CERTIFICATES, "late", "default")
        assert still["status"]["failedIssuanceAttempts"] == 1

        # A spec change is tried at once; it fails again and waits twice as long.
        await admin.patch(CERTIFICATES, "late", "default", {"spec": {"duration": "2h"}})
        obj = await eventually(lambda: failed(2), what="a second failed attempt")
        assert "next try in 2h0m0s" in (get_condition(obj, "Issuing") or {})["message"]

        # The CA arrives; the next spec change issues, and the failure record is gone.
        hierarchy.init(tmp_path)
        await admin.patch(CERTIFICATES, "late", "default", {"spec": {"duration": "3h"}})
        done = await ready(admin, "late", "default")
        assert "failedIssuanceAttempts" not in done["status"]
        assert "lastFailureTime" not in done["status"]
        assert (get_condition(done, "Issuing") or {}).get("reason") == "Issued"
    finally:
        await _stop(stop, task)


async def test_rotation_policy_never_keeps_the_key(app: APIServer, tmp_path: Path) -> None:
    admin = AsyncClient.in_process(app, Identity("admin", ("system:masters",)))
    hierarchy.init(tmp_path)
    settings = CertificateSettings(signer=Signer.from_directory(tmp_path / "pki"), policy=POLICY)
    stop, task = await _run_controller(admin, settings, None)
    try:
        for name, policy in (("keep", "Never"), ("fresh", "Always")):
            await admin.create(
                CERTIFICATES,
                certificate(name, "default", commonName=name, duration="1h",
                            privateKey={"rotationPolicy": policy}),
            )  # fmt: skip
        keys_before = {}
        for name in ("keep", "fresh"):
            await ready(admin, name, "default")
            keys_before[name] = data(await admin.get(SECRETS, f"{name}-tls", "default"), "tls.key")
            await admin.patch(CERTIFICATES, name, "default", {"spec": {"duration": "2h"}})
        for name in ("keep", "fresh"):
            await ready(admin, name, "default", revision=2)
        kept = data(await admin.get(SECRETS, "keep-tls", "default"), "tls.key")
        fresh = data(await admin.get(SECRETS, "fresh-tls", "default"), "tls.key")
        assert kept == keys_before["keep"]
        assert fresh != keys_before["fresh"]
    finally:
        await _stop(stop, task)
