"""An unmodified kopf operator (standalone mode) on a kind registered from a CRD."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.conftest import Server

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}}}
          status: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""


def _wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_kopf_operator_reacts_to_create_update_delete(server: Server, namespace: str, tmp_path: Path) -> None:
    server.kubectl("apply", "-f", "-", input=CRD)
    server.kubectl("wait", "--for=condition=established", "crd/gadgets.example.com", "--timeout=30s")
    marker = tmp_path / "marker"
    log = open(tmp_path / "kopf.log", "w")
    env = {**os.environ, "KUBECONFIG": str(server.kubeconfig), "KOPF_TEST_MARKER": str(marker)}
    operator = subprocess.Popen(
        [sys.executable, "-m", "kopf", "run", "--standalone", f"--namespace={namespace}", str(Path(__file__).with_name("kopf_operator.py"))],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        server.kubectl("apply", "-n", namespace, "-f", "-", input="apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g1}\nspec: {size: 3}\n")

        def status() -> dict:
            return server.kubectl_json("get", "-n", namespace, "gadget", "g1").get("status", {})

        done = _wait_for(lambda: status().get("created"), what=f"kopf create handler; log:\n{(tmp_path / 'kopf.log').read_text()}")
        assert done == {"seen": 3}
        assert status()["phase"] == "Ready"
        obj = server.kubectl_json("get", "-n", namespace, "gadget", "g1")
        assert "kopf.zalando.org/KopfFinalizerMarker" in obj["metadata"].get("finalizers", [])

        server.kubectl("patch", "-n", namespace, "gadget", "g1", "--type=merge", "-p", '{"spec":{"size":5}}')
        _wait_for(lambda: status().get("size") == 5, what="kopf update handler")

        server.kubectl("delete", "-n", namespace, "gadget", "g1", "--timeout=30s")
        assert marker.read_text() == "deleted g1\n"
        assert server.kubectl("get", "-n", namespace, "gadget", "g1", check=False).returncode != 0
    finally:
        operator.terminate()
        try:
            operator.wait(15)
        except subprocess.TimeoutExpired:
            operator.kill()
        server.kubectl("delete", "crd", "gadgets.example.com", check=False)
