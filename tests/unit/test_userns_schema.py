"""`spec.hostUsers` in the Instance and in a Workload's template, as the API server checks it."""

from __future__ import annotations

from typing import Any

import pytest

from hypermesh.resources.instance import InstanceSpec
from hypermesh.resources.registry import Registry, ResourceType
from hypermesh.resources.schema import Cause

REGISTRY = Registry.with_builtins()


def _type(name: str) -> ResourceType:
    resource_type = REGISTRY.resolve(name)
    assert resource_type is not None
    return resource_type


INSTANCE = _type("instances").validator
WORKLOAD = _type("workloads").validator
CONTAINERS = [{"name": "main", "image": "busybox"}]


def instance(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hypermesh.io/v1",
        "kind": "Instance",
        "metadata": {"name": "web-0", "namespace": "default"},
        "spec": {"containers": CONTAINERS, **spec},
    }


def workload(**template_spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hypermesh.io/v1",
        "kind": "Workload",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": CONTAINERS, **template_spec},
            }
        },
    }


@pytest.mark.parametrize("value", [True, False])
def test_booleans_are_valid(value: bool) -> None:
    assert INSTANCE.validate(instance(hostUsers=value)) == []
    assert WORKLOAD.validate(workload(hostUsers=value)) == []


def test_a_string_is_a_precise_error() -> None:
    assert INSTANCE.validate(instance(hostUsers="yes")) == [
        Cause(
            "FieldValueTypeInvalid",
            "spec.hostUsers",
            'Invalid value: "yes": spec.hostUsers in body must be of type boolean: "string"',
        )
    ]
    assert WORKLOAD.validate(workload(hostUsers="false")) == [
        Cause(
            "FieldValueTypeInvalid",
            "spec.template.spec.hostUsers",
            'Invalid value: "false": spec.template.spec.hostUsers in body must be of type '
            'boolean: "string"',
        )
    ]
    [cause] = INSTANCE.validate(instance(hostUsers=0))
    assert (cause.field, cause.type) == ("spec.hostUsers", "FieldValueTypeInvalid")


def test_unset_means_the_hosts_and_is_not_stored() -> None:
    # Unset is true, as in Kubernetes, without a stored default: a default would change the
    # template of every existing Workload at its next write, and so roll all its Instances.
    assert "hostUsers" not in INSTANCE.apply_defaults(instance())["spec"]
    assert "hostUsers" not in WORKLOAD.apply_defaults(workload())["spec"]["template"]["spec"]
    assert InstanceSpec.from_dict({"containers": CONTAINERS}).host_users is None


def test_the_model_reads_and_writes_the_wire_name() -> None:
    spec = InstanceSpec.from_dict({"containers": CONTAINERS, "hostUsers": False})
    assert spec.host_users is False
    assert spec.to_dict()["hostUsers"] is False
