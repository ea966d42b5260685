"""CertificateSigningRequests: what the API server stamps and refuses, what the approver approves,
what the signer signs, with the default RBAC bindings and an in-memory CA."""

from __future__ import annotations

import asyncio
import base64
import datetime
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from controllers import csrsigning
from hypermesh.api import rbac, rbacdefaults
from hypermesh.api.app import APIServer
from hypermesh.client.aio import AsyncClient
from hypermesh.client.errors import ApiError
from hypermesh.operator import Operator
from hypermesh.pki import CertificateAuthority, Identity, Signer, csr, keys
from hypermesh.runtime import join
from hypermesh.store.memory import MemoryStore

CSRS = csrsigning.CSRS
ADMIN = Identity("admin", ("system:masters",))
CONTROLLERS = Identity("system:controllers", ("system:masters",))
BOOTSTRAP = Identity("system:bootstrap:abcdef", ("system:bootstrappers",))
NODE_A = Identity("system:node:a", ("system:nodes",))
NODE_B = Identity("system:node:b", ("system:nodes",))


def request_for(common_name: str, organizations: Sequence[str] = ("system:nodes",), *, key: keys.PrivateKey | None = None,
                dns_names: Sequence[str] = ()) -> x509.CertificateSigningRequest:  # fmt: skip
    key = key or keys.generate()
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    if dns_names:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
    return builder.sign(key, keys.signature_hash(key))


CLIENT_USAGES = ["digital signature", "client auth"]


# -- the shape of a node client request --------------------------------------------------------


@pytest.mark.parametrize(
    ("request_", "usages", "problem"),
    [
        (lambda: request_for("admin", ["system:masters"]), CLIENT_USAGES, "system:node:<node name>"),
        (lambda: request_for("system:node:"), CLIENT_USAGES, "system:node:<node name>"),
        (lambda: request_for("system:node:a", ["system:nodes", "system:masters"]), CLIENT_USAGES, "exactly [system:nodes]"),
        (lambda: request_for("system:node:a", []), CLIENT_USAGES, "exactly [system:nodes]"),
        (lambda: request_for("system:node:a", dns_names=["a.example"]), CLIENT_USAGES, "names no DNS names"),
        (lambda: request_for("system:node:a"), ["digital signature", "server auth"], "must include client auth"),
        (lambda: request_for("system:node:a"), ["client auth", "server auth"], "only digital signature"),
        (lambda: request_for("system:node:a"), ["digital signature", "key encipherment", "client auth"], "only for RSA"),
    ],
)
def test_what_is_not_a_node_client_request(request_: Any, usages: list[str], problem: str) -> None:
    found = csrsigning.node_client_problem(request_(), usages)
    assert found is not None and problem in found


def test_node_client_requests() -> None:
    assert csrsigning.node_client_problem(request_for("system:node:a"), CLIENT_USAGES) is None
    assert csrsigning.node_client_problem(request_for("system:node:a"), ["client auth"]) is None
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert csrsigning.node_client_problem(request_for("system:node:a", key=rsa_key), ["key encipherment", "client auth"]) is None


def test_classify_by_requester() -> None:
    request = request_for("system:node:a")
    assert csrsigning.classify("system:node:a", request, CLIENT_USAGES) == ("selfnodeclient", "a")
    assert csrsigning.classify("system:bootstrap:abcdef", request, CLIENT_USAGES) == ("nodeclient", "a")
    assert csrsigning.classify("system:node:b", request, CLIENT_USAGES) == ("nodeclient", "a")
    kind, why = csrsigning.classify("system:node:a", request_for("admin", ["system:masters"]), CLIENT_USAGES)
    assert kind is None and "common name" in why


# -- the approver, with the default bindings ---------------------------------------------------


def default_policy() -> csrsigning.Authorize:
    authorizer = rbac.Authorizer()
    authorizer.replace(rbac.build(rbacdefaults.cluster_roles(), [], rbacdefaults.cluster_role_bindings(), []))

    async def authorize(user: str, groups: Sequence[str], extra: dict[str, Any], subresource: str) -> bool:
        attrs = rbac.Attributes(user, tuple(groups), "create", "certificates.k8s.io", "certificatesigningrequests", subresource, "", "")
        return authorizer.authorize(attrs).allowed

    return authorize


def spec_of(identity: Identity, usages: list[str] = CLIENT_USAGES) -> dict[str, Any]:
    return {"username": identity.user, "groups": [*identity.groups, "system:authenticated"], "usages": usages}


@pytest.mark.parametrize(
    ("requester", "common_name", "organizations", "approved", "says"),
    [
        (BOOTSTRAP, "system:node:a", ["system:nodes"], True, "node a's client certificate"),
        (NODE_A, "system:node:a", ["system:nodes"], True, "node a's renewal"),
        (NODE_B, "system:node:a", ["system:nodes"], False, 'system:node:b may not request a certificate for node "a"'),
        (BOOTSTRAP, "admin", ["system:masters"], False, "signs node client certificates only"),
        (NODE_A, "system:node:a", ["system:nodes", "system:masters"], False, "exactly [system:nodes]"),
        (Identity("alice"), "system:node:a", ["system:nodes"], False, "alice may not request node client certificates"),
        (Identity("system:node:a"), "system:node:a", ["system:nodes"], False, "may not renew its node certificate"),
    ],
)
async def test_approval_rules(requester: Identity, common_name: str, organizations: list[str], approved: bool, says: str) -> None:
    verdict = await csrsigning.approval(spec_of(requester), request_for(common_name, organizations), default_policy())
    assert verdict.approved is approved
    assert says in verdict.message
    assert verdict.reason in (("AutoApproved",) if approved else ("NotAuthorized", "NotNodeClientRequest"))


def test_lifetime_is_capped_and_backdated_little() -> None:
    request = request_for("system:node:a")
    day = datetime.timedelta(hours=24)
    leaf = csrsigning.leaf_request(request, {"usages": CLIENT_USAGES}, day)
    assert (leaf.common_name, leaf.organizations, leaf.lifetime) == ("system:node:a", ("system:nodes",), day)
    assert leaf.backdate == datetime.timedelta(minutes=5)
    assert csrsigning.leaf_request(request, {"expirationSeconds": 3600}, day).lifetime == datetime.timedelta(hours=1)
    assert csrsigning.leaf_request(request, {"expirationSeconds": 10**9}, day).lifetime == day
    short = csrsigning.leaf_request(request, {}, datetime.timedelta(seconds=20))
    assert short.backdate == datetime.timedelta(seconds=2)


# -- the API server and the controller, in process ---------------------------------------------


@pytest.fixture
async def cluster() -> AsyncIterator[APIServer]:
    server = APIServer(MemoryStore())
    await server.start()
    settings = csrsigning.CSRSigningSettings(signer=Signer.from_authority(CertificateAuthority.generate()), max_duration=datetime.timedelta(minutes=10))
    op = Operator(AsyncClient.in_process(server, CONTROLLERS), name="csrsigning-test")
    csrsigning.setup(op, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(op.run(stop))
    try:
        yield server
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await server.stop()


def csr_body(request: x509.CertificateSigningRequest, **spec: Any) -> dict[str, Any]:
    pem = request.public_bytes(serialization.Encoding.PEM)
    return {
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"generateName": "t-"},
        "spec": {"request": base64.b64encode(pem).decode(), "signerName": csr.NODE_CLIENT_SIGNER, "usages": CLIENT_USAGES, **spec},
    }  # fmt: skip


async def settled(client: AsyncClient, name: str) -> dict[str, Any]:
    for _ in range(200):
        obj = await client.get(CSRS, name)
        status = obj.get("status") or {}
        if status.get("certificate") or any(c["type"] in ("Denied", "Failed") for c in status.get("conditions") or []):
            return obj
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} was neither issued nor refused")


async def test_the_requester_is_stamped_and_cannot_be_forged(cluster: APIServer) -> None:
    node = AsyncClient.in_process(cluster, NODE_B)
    forged = csr_body(request_for("system:node:a"), username="system:node:a", groups=["system:masters"], uid="1", extra={"x": ["y"]})
    created = await node.create(CSRS, forged)
    spec = created["spec"]
    assert (spec["username"], spec["groups"]) == ("system:node:b", ["system:nodes", "system:authenticated"])
    assert "uid" not in spec and "extra" not in spec
    denied = await settled(node, created["metadata"]["name"])
    condition = denied["status"]["conditions"][-1]
    assert (condition["type"], condition["reason"]) == ("Denied", "NotAuthorized")
    assert 'system:node:b may not request a certificate for node "a"' in condition["message"]
    assert "certificate" not in denied["status"]


async def test_a_bootstrapper_gets_a_node_certificate(cluster: APIServer) -> None:
    key = keys.generate()
    client = AsyncClient.in_process(cluster, BOOTSTRAP)
    created = await client.create(CSRS, csr_body(request_for("system:node:a", key=key)))
    issued = await settled(client, created["metadata"]["name"])
    assert [c["type"] for c in issued["status"]["conditions"]] == ["Approved"]
    chain = x509.load_pem_x509_certificates(base64.b64decode(issued["status"]["certificate"]))
    leaf = chain[0]
    assert len(chain) == 2 and leaf.issuer == chain[1].subject  # the leaf, then the intermediate
    assert csr.subject_parts(leaf) == ("system:node:a", ("system:nodes",))
    assert leaf.public_key() == key.public_key()
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == datetime.timedelta(minutes=11)  # 10 min + 1 min backdate
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]


async def test_a_node_renews_through_the_agent_code(cluster: APIServer) -> None:
    node = AsyncClient.in_process(cluster, NODE_A)
    chain_pem, key_pem, name = await join.request_certificate(node, "a", credential="test identity")
    leaf = csr.load_chain(chain_pem)[0]
    assert keys.load_pem(key_pem).public_key() == leaf.public_key()
    # A node reads its own request, not another's.
    assert (await node.get(CSRS, name))["spec"]["username"] == "system:node:a"
    with pytest.raises(ApiError) as caught:
        await AsyncClient.in_process(cluster, NODE_B).get(CSRS, name)
    assert caught.value.status == 403
    with pytest.raises(join.JoinError, match='may not request a certificate for node "b"'):
        await join.request_certificate(node, "b", credential="test identity")


async def test_spec_is_immutable_and_approval_is_final(cluster: APIServer) -> None:
    admin = AsyncClient.in_process(cluster, ADMIN)
    created = await admin.create(CSRS, csr_body(request_for("system:node:a"), signerName="example.com/manual"))
    name = created["metadata"]["name"]
    patched = await admin.patch(CSRS, name, None, {"spec": {"username": "system:node:a", "signerName": "x/y"}})
    assert patched["spec"] == created["spec"]
    approved = {"type": "Approved", "status": "True", "reason": "Admin", "message": "ok"}
    denied = {"type": "Denied", "status": "True", "reason": "Admin", "message": "no"}
    with pytest.raises(ApiError, match="mutually exclusive"):
        await admin.update_status(CSRS, name, None, {"conditions": [approved, denied]})
    await admin.update_status(CSRS, name, None, {"conditions": [approved]})
    with pytest.raises(ApiError, match="may not remove the Approved condition"):
        await admin.update_status(CSRS, name, None, {"conditions": []})
    with pytest.raises(ApiError, match="status.certificate"):
        await admin.update_status(CSRS, name, None, {"certificate": base64.b64encode(b"not a certificate").decode()})


async def test_a_request_must_be_a_signed_pkcs10_request(cluster: APIServer) -> None:
    admin = AsyncClient.in_process(cluster, ADMIN)
    body = csr_body(request_for("system:node:a"))
    body["spec"]["request"] = base64.b64encode(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n").decode()
    with pytest.raises(ApiError) as caught:
        await admin.create(CSRS, body)
    assert caught.value.status == 422 and "spec.request" in str(caught.value.status_body)


async def test_other_signers_are_left_alone(cluster: APIServer) -> None:
    admin = AsyncClient.in_process(cluster, ADMIN)
    created = await admin.create(CSRS, csr_body(request_for("system:node:a"), signerName="example.com/other"))
    await asyncio.sleep(0.3)
    assert "status" not in await admin.get(CSRS, created["metadata"]["name"])
