"""Random bodies at the API never produce a 500 or crash the server; every error is a Status."""

from __future__ import annotations

import json

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.conftest import Server

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
keys = st.sampled_from(["apiVersion", "kind", "metadata", "spec", "status", "name", "replicas", "template", "containers", "labels", "finalizers", "op", "path", "value"])


@st.composite
def object_like(draw: st.DrawFn) -> object:
    """Mostly Workload-shaped objects with random holes and random values."""
    base = {
        "apiVersion": draw(st.sampled_from(["hypermesh.io/v1", "v1", None, 3])),
        "kind": draw(st.sampled_from(["Workload", "Instance", None, ""])),
        "metadata": draw(st.dictionaries(st.sampled_from(["name", "labels", "annotations", "finalizers", "generateName", "namespace", "resourceVersion", "ownerReferences"]), json_values, max_size=4)),
        "spec": draw(st.dictionaries(keys, json_values, max_size=4)),
    }
    return draw(st.sampled_from([base, draw(json_values), [draw(json_values)]]))


CONTENT_TYPES = ["application/json", "application/merge-patch+json", "application/json-patch+json", "application/apply-patch+yaml", "application/strategic-merge-patch+json", "text/plain", ""]


def test_random_bodies_never_500(server: Server) -> None:
    base = "/apis/hypermesh.io/v1/namespaces/default/workloads"
    with server.http() as http:
        seed = {"apiVersion": "hypermesh.io/v1", "kind": "Workload", "metadata": {"name": "fuzz"}, "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}
        assert http.post(base, content=orjson.dumps(seed)).status_code == 201

        @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(
            method=st.sampled_from(["POST", "PUT", "PATCH", "DELETE", "GET"]),
            path=st.sampled_from([base, f"{base}/fuzz", f"{base}/fuzz/status", f"{base}/other", "/api/v1/namespaces", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"]),
            body=object_like(),
            raw=st.one_of(st.none(), st.binary(max_size=64)),
            content_type=st.sampled_from(CONTENT_TYPES),
            params=st.dictionaries(st.sampled_from(["fieldManager", "fieldValidation", "dryRun", "force", "labelSelector", "fieldSelector", "limit", "continue", "resourceVersion"]), st.text(max_size=10), max_size=3),
        )
        def probe(method: str, path: str, body: object, raw: bytes | None, content_type: str, params: dict[str, str]) -> None:
            if method == "DELETE":
                # Deletes run as dry runs, so the fuzzer cannot remove the kinds it probes.
                params = {**params, "dryRun": "All"}
            content = raw if raw is not None else json.dumps(body).encode()
            response = http.request(method, path, content=content, headers={"content-type": content_type}, params=params)
            assert response.status_code < 500, (method, path, content[:200], params, response.text[:500])
            if response.status_code >= 400:
                status = response.json()
                assert status["kind"] == "Status" and status["code"] == response.status_code

        probe()
        assert http.get("/livez").status_code == 200


def test_a_control_character_in_an_unknown_field_is_warned_about_not_a_crash(server: Server) -> None:
    # Found by the fuzz test: the "unknown field" warning echoed the name into a header, and a
    # header value with a control character could not be sent at all (the connection dropped).
    base = "/apis/hypermesh.io/v1/namespaces/default/workloads"
    seed = {
        "apiVersion": "hypermesh.io/v1", "kind": "Workload", "metadata": {"name": "ctl"},
        "spec": {"replicas": 1, "template": {"metadata": {"labels": {"app": "ctl"}}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
    }
    with server.http() as http:
        assert http.post(base, content=orjson.dumps(seed)).status_code == 201
        response = http.patch(f"{base}/ctl", content=b'{"\\u001f": false}', headers={"content-type": "application/merge-patch+json"})
        assert response.status_code == 200, response.text
        assert 'unknown field \\"\\x1f\\"' in response.headers["warning"]
        assert http.delete(f"{base}/ctl").status_code == 200
