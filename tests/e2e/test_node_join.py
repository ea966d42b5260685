"""Node join end to end: `hypermesh token create`, a real `hypermesh agent --server --token
--ca-hash` process that gets its own node certificate through a CertificateSigningRequest, runs
what is bound to it, and renews its certificate (20 s lifetimes here) without a restart and
without a failed request.

Needs root and runc (the agent runs containers); elsewhere the module is skipped with the reason.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from hypermesh.pki import csr, keys
from tests.e2e import agent_harness
from tests.e2e.conftest import VENV_BIN, Server, free_port

pytestmark = [pytest.mark.timeout(300), *agent_harness.REQUIREMENTS]

NODE = "join-e2e"
BRIDGE = f"hmj{os.getpid() % 10000}"
PREFIX = f"fd{(os.getpid() + 61) % 256:02x}:101::/48"
NODE_SPEC = agent_harness.AgentNode(NODE, BRIDGE, PREFIX)
CERT_LIFETIME = 20  # seconds, through HYPERMESH_NODE_CERTIFICATE_DURATION
CSR_PATH = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
eventually = agent_harness.eventually


@dataclass
class Joined:
    server: Server
    base: Path
    agent_dir: Path
    token: str
    join_command: list[str]
    agent: subprocess.Popen[str]
    agent_logs: list[Path]

    @property
    def kubeconfig(self) -> Path:
        return self.agent_dir / "kubeconfig"


def hypermesh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(VENV_BIN / "hypermesh"), *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"hypermesh {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def create_token(server: Server, *extra: str) -> tuple[str, list[str]]:
    lines = hypermesh("token", "create", "--data-dir", str(server.data_dir), *extra).stdout.splitlines()
    return lines[0], lines[1].split()


def agent_args(command: list[str], agent_dir: Path, name: str = NODE) -> list[str]:
    """The printed join command, run from this venv, plus this test's node settings."""
    assert command[:2] == ["hypermesh", "agent"], command
    return [str(VENV_BIN / "hypermesh"), *command[1:], "--name", name, "--data-dir", str(agent_dir),
            "--bridge", BRIDGE, "--cluster-prefix", PREFIX]  # fmt: skip


def start_agent(args: list[str], log_path: Path) -> subprocess.Popen[str]:
    with open(log_path, "a") as log:
        agent = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, text=True)
    assert agent.stdout is not None
    line = agent.stdout.readline().strip()
    assert line == "ready", log_path.read_text()
    return agent


@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Joined]:
    base = tmp_path_factory.mktemp("join")
    server = Server(base / "data", free_port(), controllers=True, env={"HYPERMESH_NODE_CERTIFICATE_DURATION": f"{CERT_LIFETIME}s"})
    server.start()
    agent_dir = base / "agent"
    state: Joined | None = None
    try:
        token, command = create_token(server, "--ttl", "1h", "--description", "join e2e")
        log_path = base / "agent.log"
        agent = start_agent(agent_args(command, agent_dir), log_path)
        state = Joined(server, base, agent_dir, token, command, agent, [log_path])
        yield state
    finally:
        server.kubectl("delete", "instances", "--all", "-n", "default", "--wait=false", check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any((agent_dir / "instances").glob("*")):
            time.sleep(0.3)
        if state is not None:
            state.agent.terminate()
            state.agent.wait(20)
        server.stop()
        agent_harness.sweep(agent_dir, NODE_SPEC)


# -- helpers -----------------------------------------------------------------------------------


def ca_pem(server: Server) -> bytes:
    return (server.data_dir / "pki" / "ca.crt").read_bytes()


def leaf_of(kubeconfig: Path) -> x509.Certificate:
    user = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]
    return x509.load_pem_x509_certificates(base64.b64decode(user["client-certificate-data"]))[0]


def bearer(server: Server, token: str) -> httpx.Client:
    """No client certificate, a bearer token: how a joining node talks before it has one."""
    import ssl

    context = ssl.create_default_context(cadata=ca_pem(server).decode())
    return httpx.Client(base_url=server.url, verify=context, timeout=30, headers={"Authorization": f"Bearer {token}"})


def as_node(joined: Joined) -> httpx.Client:
    """The node's own current certificate (it rotates: read it fresh)."""
    import ssl

    user = yaml.safe_load(joined.kubeconfig.read_text())["users"][0]["user"]
    context = ssl.create_default_context(cadata=ca_pem(joined.server).decode())
    with tempfile.NamedTemporaryFile("wb", suffix=".pem") as pem:
        pem.write(base64.b64decode(user["client-certificate-data"]) + base64.b64decode(user["client-key-data"]))
        pem.flush()
        context.load_cert_chain(pem.name)
    return httpx.Client(base_url=joined.server.url, verify=context, timeout=30)


def csrs(server: Server) -> list[dict[str, Any]]:
    items = server.kubectl_json("get", "certificatesigningrequests")["items"]
    return sorted(items, key=lambda i: (i["metadata"]["creationTimestamp"], int(i["metadata"]["resourceVersion"])))


def audit(server: Server) -> list[dict[str, Any]]:
    time.sleep(0.5)  # the log is flushed four times a second
    return [json.loads(line) for line in (server.data_dir / "audit.log").read_text().splitlines() if line.strip()]


def fingerprint(cert: x509.Certificate) -> str:
    return "X509SHA256=" + cert.fingerprint(hashes.SHA256()).hex()


def node_csr(common_name: str, **spec: Any) -> dict[str, Any]:
    request = csr.build_request(keys.generate(), common_name, ["system:nodes"])
    return {
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest", "metadata": {"generateName": "probe-"},
        "spec": {"request": base64.b64encode(request).decode(), "signerName": csr.NODE_CLIENT_SIGNER,
                 "usages": ["digital signature", "client auth"], **spec},
    }  # fmt: skip


def micro_time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- tests -------------------------------------------------------------------------------------


def test_token_create_prints_the_token_and_the_join_command(joined: Joined) -> None:
    server = joined.server
    token_id, secret = joined.token.split(".")
    assert len(token_id) == 6 and len(secret) == 16
    spki = x509.load_pem_x509_certificate(ca_pem(server)).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert joined.join_command == ["hypermesh", "agent", "--server", server.url, "--token", joined.token,
                                   "--ca-hash", "sha256:" + hashlib.sha256(spki).hexdigest()]  # fmt: skip
    stored = server.kubectl_json("get", "secret", f"bootstrap-token-{token_id}", "-n", "kube-system")
    assert stored["type"] == "bootstrap.kubernetes.io/token"
    data = {k: base64.b64decode(v).decode() for k, v in stored["data"].items()}
    assert (data["token-id"], data["token-secret"], data["usage-bootstrap-authentication"]) == (token_id, secret, "true")
    assert micro_time(data["expiration"]) > datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=55)
    listing = hypermesh("token", "list", "--data-dir", str(server.data_dir)).stdout
    assert token_id in listing and "join e2e" in listing and secret not in listing


def test_a_wrong_ca_hash_is_refused_and_nothing_is_written(joined: Joined) -> None:
    before = len(csrs(joined.server))
    wrong = "sha256:" + "0" * 64
    command = [*joined.join_command[:-1], wrong]
    bad_dir = joined.base / "agent-wrong-hash"
    result = subprocess.run(agent_args(command, bad_dir, "join-wrong"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    real = joined.join_command[-1]
    assert f"refusing the cluster CA of {joined.server.url}: its public key hash is {real}, but --ca-hash is {wrong}" in result.stderr
    assert not bad_dir.exists()
    assert len(csrs(joined.server)) == before


def test_unknown_expired_and_deleted_tokens_get_401(joined: Joined) -> None:
    server = joined.server
    with bearer(server, joined.token) as client:
        assert client.get(CSR_PATH).status_code == 200
        denied = client.get("/api/v1/namespaces")
        assert denied.status_code == 403 and f"system:bootstrap:{joined.token.split('.')[0]}" in denied.json()["message"]
    expired, _ = create_token(server, "--ttl", "1s")
    deleted, _ = create_token(server)
    hypermesh("token", "delete", deleted.split(".")[0], "--data-dir", str(server.data_dir))
    time.sleep(1.5)
    unknown = "abcdef.0123456789abcdef"
    wrong_secret = joined.token.split(".")[0] + ".0123456789abcdef"
    for token in (expired, deleted, unknown, wrong_secret, "garbage"):
        with bearer(server, token) as client:
            answer = client.get(CSR_PATH)
            assert answer.status_code == 401, (token, answer.text)
            assert answer.json()["reason"] == "Unauthorized"
    # The agent says why it cannot join, and writes nothing.
    command = [*joined.join_command]
    command[command.index("--token") + 1] = expired
    bad_dir = joined.base / "agent-expired"
    result = subprocess.run(agent_args(command, bad_dir, "join-expired"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"did not accept the bootstrap token {expired.split('.')[0]} (401 Unauthorized)" in result.stderr
    assert not bad_dir.exists()


def test_the_node_registers_with_its_own_certificate(joined: Joined) -> None:
    server = joined.server
    assert stat.S_IMODE(os.stat(joined.kubeconfig).st_mode) == 0o600
    leaf = leaf_of(joined.kubeconfig)
    assert csr.subject_parts(leaf) == (f"system:node:{NODE}", ("system:nodes",))
    node = server.kubectl_json("get", "node", NODE)
    assert node["metadata"]["name"] == NODE
    # The Node was created by the node's own identity.
    creates = [e for e in audit(server) if (e.get("resource") or {}).get("resource") == "nodes" and e["verb"] == "create" and e["code"] == 201]
    assert [e["user"] for e in creates] == [f"system:node:{NODE}"], creates
    # Its first certificate came from a request by the bootstrap token's identity.
    first = csrs(server)[0]
    token_id = joined.token.split(".")[0]
    assert first["spec"]["username"] == f"system:bootstrap:{token_id}"
    assert "system:bootstrappers" in first["spec"]["groups"]
    assert [c["type"] for c in first["status"]["conditions"]] == ["Approved"]
    lease = server.kubectl_json("get", "lease", NODE, "-n", "hypermesh-node-lease")
    assert lease["spec"]["holderIdentity"] == NODE


def test_an_instance_bound_to_the_joined_node_runs(joined: Joined) -> None:
    server = joined.server
    server.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "hypermesh.io/v1", "kind": "Instance",
        "metadata": {"name": "joined", "namespace": "default"},
        "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", "echo hello from a joined node; sleep 3600"]}]},
    }))

    def running() -> bool:
        item = server.kubectl_json("get", "instance", "joined", "-n", "default")
        return (item.get("status") or {}).get("phase") == "Running"

    eventually(running, what="the Instance Running on the joined node")
    # Its logs come through the API server from the agent's own endpoint.
    with server.http() as admin:
        def logged() -> bool:
            answer = admin.get("/apis/hypermesh.io/v1/namespaces/default/instances/joined/log")
            return answer.status_code == 200 and "hello from a joined node" in answer.text

        eventually(logged, timeout=20, what="the Instance's log through the API server")
    server.kubectl("delete", "instance", "joined", "-n", "default")


def test_a_node_cannot_get_a_certificate_for_another_node(joined: Joined) -> None:
    with as_node(joined) as client:
        created = client.post(CSR_PATH, json=node_csr("system:node:other", username="system:node:other", groups=["system:masters"]))
        assert created.status_code == 201, created.text
        obj = created.json()
        # The requester is whoever made the request, whatever the body said.
        assert obj["spec"]["username"] == f"system:node:{NODE}"
        assert obj["spec"]["groups"] == ["system:nodes", "system:authenticated"]
        name = obj["metadata"]["name"]

        def refused() -> dict[str, Any] | None:
            conditions = (client.get(f"{CSR_PATH}/{name}").json().get("status") or {}).get("conditions") or []
            return next((c for c in conditions if c["type"] == "Denied"), None)

        denied = eventually(refused, timeout=20, what="the request denied")
        assert f'system:node:{NODE} may not request a certificate for node "other"' in denied["message"]
        assert "certificate" not in (client.get(f"{CSR_PATH}/{name}").json().get("status") or {})
        # Nor may it read other requests, or list them.
        other = csrs(joined.server)[0]["metadata"]["name"]
        assert client.get(f"{CSR_PATH}/{other}").status_code == 403
        assert client.get(CSR_PATH).status_code == 403


def test_the_agent_renews_its_certificate_and_keeps_working(joined: Joined) -> None:
    server = joined.server
    first = leaf_of(joined.kubeconfig)
    second = eventually(lambda: (c := leaf_of(joined.kubeconfig)).serial_number != first.serial_number and c,
                        timeout=CERT_LIFETIME + 10, what="a renewed certificate")  # fmt: skip
    assert csr.subject_parts(second) == (f"system:node:{NODE}", ("system:nodes",))
    # The renewal was asked for by the node itself with its current certificate; and the next
    # one with the new certificate: requests after the switch present the new one.
    eventually(lambda: leaf_of(joined.kubeconfig).serial_number != second.serial_number, timeout=CERT_LIFETIME + 10, what="another renewal")

    def renewed_with(cert: x509.Certificate) -> dict[str, Any] | None:
        """The issued request for this node that `cert` authenticated."""
        wanted = fingerprint(cert)
        for item in csrs(server):
            request = csr.load_request(base64.b64decode(item["spec"]["request"]))
            if (item["spec"].get("extra") or {}).get(csr.CREDENTIAL_ID_KEY) == [wanted] and (item.get("status") or {}).get("certificate") \
                    and csr.subject_parts(request)[0] == f"system:node:{NODE}":  # fmt: skip
                return item
        return None

    for cert in (first, second):
        renewal = renewed_with(cert)
        assert renewal is not None, f"no renewal requested with certificate {cert.serial_number:x}"
        assert renewal["spec"]["username"] == f"system:node:{NODE}"
    # Past the first certificate's expiry the node still heartbeats (the Lease moves on).
    expiry = first.not_valid_after_utc
    wait = (expiry - datetime.datetime.now(datetime.UTC)).total_seconds()
    if wait > 0:
        time.sleep(wait)

    def renewed_lease() -> bool:
        lease = server.kubectl_json("get", "lease", NODE, "-n", "hypermesh-node-lease")
        return micro_time(lease["spec"]["renewTime"]) > expiry

    eventually(renewed_lease, timeout=20, what="a Lease renewal after the first certificate expired")
    node = server.kubectl_json("get", "node", NODE)
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    # Not one request was refused for its credentials (the CSR probes above excepted), and the
    # agent logged no error and no failed renewal.
    node_user = f"system:node:{NODE}"
    refused = [e for e in audit(server) if e["user"] == node_user and e["code"] in (401, 403) and "certificatesigningrequests" not in json.dumps(e)]
    assert not refused, refused[:5]
    assert not [e for e in audit(server) if e["code"] == 401 and e["user"] != "system:anonymous"]
    log = "\n".join(p.read_text() for p in joined.agent_logs)
    assert " ERROR " not in log and "Traceback" not in log and "renewing the client certificate" not in log, log[-3000:]


def test_a_restarted_agent_reuses_its_kubeconfig(joined: Joined) -> None:
    server = joined.server
    bootstrap_requests = [i for i in csrs(server) if i["spec"]["username"].startswith("system:bootstrap:")]
    joined.agent.send_signal(signal.SIGTERM)
    assert joined.agent.wait(20) == 0
    # The same command line (a service unit's): the kept certificate is used, the token is not.
    log_path = joined.base / "agent-restarted.log"
    joined.agent = start_agent(agent_args(joined.join_command, joined.agent_dir), log_path)
    joined.agent_logs.append(log_path)
    assert f"using the credentials in {joined.kubeconfig}" in log_path.read_text()
    assert [i for i in csrs(server) if i["spec"]["username"].startswith("system:bootstrap:")] == bootstrap_requests
    assert server.kubectl_json("get", "node", NODE)["metadata"]["name"] == NODE


def test_the_token_secret_is_never_logged(joined: Joined) -> None:
    secret = joined.token.split(".")[1]
    server = joined.server
    assert server.log_path is not None
    for path in [server.log_path, server.data_dir / "audit.log", *joined.agent_logs]:
        assert secret not in path.read_text(errors="replace"), path
    # Secrets are encrypted at rest: not in the state engine's files either.
    for path in server.data_dir.glob("state.db*"):
        assert secret.encode() not in path.read_bytes(), path
