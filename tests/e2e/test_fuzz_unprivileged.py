"""Random requests from an unprivileged user: never a 500, and never a permission gained.

The user holds `admin` in one namespace (so it may write Roles and RoleBindings there, and the
escalation checks are what stop it). The fuzzer throws random methods, paths (its own
namespace, another, cluster-scoped kinds, RBAC objects, reviews, subresources), bodies and
content types at the server. Afterwards the user may do exactly what it could before (its
SelfSubjectRulesReview is unchanged in its namespace, another and cluster-wide), no
ClusterRoleBinding or binding outside its namespace appeared, and no object outside its
namespace was created by it.
"""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
from collections.abc import Iterator

import httpx
import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import VENV_BIN, Server, free_port
from tests.e2e.test_fuzz_api import CONTENT_TYPES, object_like

pytestmark = pytest.mark.timeout(300)

NS, OTHER = "fuzz-home", "fuzz-other"
RBAC = "rbac.authorization.k8s.io"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("fuzzu")
    server = Server(base / "data", free_port())
    server.start()
    try:
        for ns in (NS, OTHER):
            server.kubectl("create", "namespace", ns)
        server.kubectl("create", "rolebinding", "mallory-edit", "--clusterrole=admin", "--user=mallory", "-n", NS)
        yield server
    finally:
        server.stop()


def client_for(server: Server, user: str) -> httpx.Client:
    path = server.data_dir.parent / f"{user}.kubeconfig"
    subprocess.run([str(VENV_BIN / "hypermesh"), "user", "create", user, "--data-dir", str(server.data_dir), "--output", str(path)], check=True, capture_output=True)
    import ssl

    config = yaml.safe_load(path.read_text())
    entry = config["users"][0]["user"]
    ctx = ssl.create_default_context(cadata=base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]).decode())
    with tempfile.NamedTemporaryFile("wb", suffix=".pem") as pem:
        pem.write(base64.b64decode(entry["client-certificate-data"]) + base64.b64decode(entry["client-key-data"]))
        pem.flush()
        ctx.load_cert_chain(pem.name)
    return httpx.Client(base_url=server.url, verify=ctx, timeout=30)


def rules(http: httpx.Client, namespace: str) -> list[dict[str, object]]:
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": namespace}}
    answer = http.post("/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", content=orjson.dumps(review))
    assert answer.status_code == 201, answer.text
    found = answer.json()["status"]
    return sorted(json.dumps(rule, sort_keys=True) for rule in found["resourceRules"] + found["nonResourceRules"])  # type: ignore[return-value]


def paths() -> list[str]:
    hm = "/apis/hypermesh.io/v1"
    return [
        f"{hm}/namespaces/{NS}/workloads", f"{hm}/namespaces/{NS}/workloads/w", f"{hm}/namespaces/{NS}/instances/i/status",
        f"{hm}/namespaces/{NS}/instances/i/exec", f"{hm}/namespaces/{OTHER}/workloads", f"{hm}/namespaces/{OTHER}/workloads/w",
        f"{hm}/nodes", f"{hm}/nodes/n1", f"{hm}/nodes/n1/proxy/images", f"{hm}/bindings",
        f"/apis/{RBAC}/v1/namespaces/{NS}/rolebindings", f"/apis/{RBAC}/v1/namespaces/{NS}/roles",
        f"/apis/{RBAC}/v1/clusterrolebindings", f"/apis/{RBAC}/v1/clusterroles/cluster-admin",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        f"/api/v1/namespaces/{NS}/secrets", f"/api/v1/namespaces/{OTHER}/secrets", "/api/v1/namespaces",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", "/apis/certificates.k8s.io/v1/certificatesigningrequests",
    ]


@st.composite
def rbac_like(draw: st.DrawFn) -> object:
    """Bindings and roles that try to grant the fuzzer more."""
    kind = draw(st.sampled_from(["RoleBinding", "ClusterRoleBinding", "Role", "ClusterRole"]))
    obj: dict[str, object] = {"apiVersion": f"{RBAC}/v1", "kind": kind, "metadata": {"name": draw(st.sampled_from(["up", "x", "mallory"])), "namespace": NS}}
    if kind.endswith("Binding"):
        obj["roleRef"] = {"apiGroup": RBAC, "kind": draw(st.sampled_from(["ClusterRole", "Role"])), "name": draw(st.sampled_from(["cluster-admin", "admin", "edit", "view", "x"]))}
        obj["subjects"] = [{"kind": draw(st.sampled_from(["User", "Group"])), "name": draw(st.sampled_from(["mallory", "system:masters", "system:authenticated"]))}]
    else:
        obj["rules"] = [{"apiGroups": [draw(st.sampled_from(["*", "", "hypermesh.io"]))], "resources": [draw(st.sampled_from(["*", "secrets", "nodes", "rolebindings"]))], "verbs": [draw(st.sampled_from(["*", "get", "escalate", "bind"]))]}]
    return obj


def test_an_unprivileged_fuzzer_gets_no_500_and_no_more_rights(cluster: Server) -> None:
    http = client_for(cluster, "mallory")
    before = {ns: rules(http, ns) for ns in (NS, OTHER, "")}
    bindings_before = cluster.kubectl_json("get", "rolebindings,clusterrolebindings", "-A")["items"]

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(
        method=st.sampled_from(["POST", "PUT", "PATCH", "DELETE", "GET"]),
        path=st.sampled_from(paths()),
        body=st.one_of(object_like(), rbac_like()),
        raw=st.one_of(st.none(), st.binary(max_size=48)),
        content_type=st.sampled_from(CONTENT_TYPES),
        params=st.dictionaries(st.sampled_from(["fieldManager", "dryRun", "force", "watch", "fieldSelector", "limit", "gracePeriodSeconds"]), st.text(max_size=10), max_size=3),
    )
    def probe(method: str, path: str, body: object, raw: bytes | None, content_type: str, params: dict[str, str]) -> None:
        if params.get("watch"):
            params = {**params, "timeoutSeconds": "1"}
        content = raw if raw is not None else json.dumps(body).encode()
        response = http.request(method, path, content=content, headers={"content-type": content_type}, params=params)
        assert response.status_code < 500, (method, path, content[:200], params, response.text[:500])

    probe()
    after = {ns: rules(http, ns) for ns in (NS, OTHER, "")}
    assert after == before
    bindings_after = cluster.kubectl_json("get", "rolebindings,clusterrolebindings", "-A")["items"]
    outside = lambda items: sorted((b["kind"], b["metadata"].get("namespace", ""), b["metadata"]["name"]) for b in items if b["metadata"].get("namespace") != NS)  # noqa: E731
    assert outside(bindings_after) == outside(bindings_before)
    # Whatever it bound inside its namespace grants no more than `admin` there.
    for binding in bindings_after:
        if binding["metadata"].get("namespace") == NS:
            assert binding["roleRef"]["name"] != "cluster-admin", binding
    # Nothing outside its namespace carries its hand: no object in OTHER and no cluster-scoped
    # kind it may not write was created.
    assert cluster.kubectl_json("get", "workloads,secrets", "-n", OTHER)["items"] == []
    assert cluster.kubectl_json("get", "nodes.hypermesh.io")["items"] == []
    assert cluster.http().get("/livez").status_code == 200
