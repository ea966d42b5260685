"""Server-side schema validation: causes, unknown fields, pruning, defaults, robustness."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypermesh.resources import schema as schemas
from hypermesh.resources.errors import CRDError
from hypermesh.resources.registry import Registry, ResourceType
from hypermesh.resources.schema import Cause, CompiledSchema, compile_schema

REGISTRY = Registry.with_builtins()


def _type(name: str) -> ResourceType:
    resource_type = REGISTRY.resolve(name)
    assert resource_type is not None
    return resource_type


WORKLOAD = _type("workloads").validator


def workload(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "busybox"}]},
        }
    }
    body.update(spec)
    return {
        "apiVersion": "hypermesh.io/v1",
        "kind": "Workload",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": body,
    }


def container(obj: dict[str, Any], index: int = 0) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]["containers"][index]


def only(causes: list[Cause]) -> Cause:
    assert len(causes) == 1, causes
    return causes[0]


# -- causes and messages ----------------------------------------------------------------------


def test_a_valid_workload_has_no_causes() -> None:
    assert WORKLOAD.validate(workload(replicas=3)) == []


def test_wrong_type_reads_like_kubernetes() -> None:
    cause = only(WORKLOAD.validate(workload(replicas="abc")))
    assert cause == Cause(
        "FieldValueTypeInvalid",
        "spec.replicas",
        'Invalid value: "abc": spec.replicas in body must be of type integer: "string"',
    )
    assert str(cause).startswith("spec.replicas: Invalid value")
    assert cause.as_status_cause() == {
        "reason": "FieldValueTypeInvalid",
        "message": cause.message,
        "field": "spec.replicas",
    }


def test_booleans_are_not_integers_but_integral_floats_are() -> None:
    assert "boolean" in only(WORKLOAD.validate(workload(replicas=True))).message
    assert WORKLOAD.validate(workload(replicas=3.0)) == []
    assert only(WORKLOAD.validate(workload(replicas=3.5))).type == "FieldValueTypeInvalid"


def test_enum_lists_the_supported_values() -> None:
    obj = workload()
    obj["spec"]["template"]["spec"]["restartPolicy"] = "Sometimes"
    cause = only(WORKLOAD.validate(obj))
    assert cause.type == "FieldValueNotSupported"
    assert cause.field == "spec.template.spec.restartPolicy"
    assert cause.message == (
        'Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never"'
    )


def test_missing_required_fields_are_reported_with_their_paths() -> None:
    obj = workload()
    del container(obj)["image"]
    obj["spec"]["template"]["spec"]["containers"].append({"image": "x"})
    causes = WORKLOAD.validate(obj)
    assert {(c.type, c.field, c.message) for c in causes} == {
        ("FieldValueRequired", "spec.template.spec.containers[0].image", "Required value"),
        ("FieldValueRequired", "spec.template.spec.containers[1].name", "Required value"),
    }
    assert (
        only(WORKLOAD.validate({"apiVersion": "hypermesh.io/v1", "kind": "Workload"})).field
        == "spec"
    )


def test_bounds_lengths_and_patterns() -> None:
    cause = only(WORKLOAD.validate(workload(replicas=-1)))
    assert cause.message == (
        "Invalid value: -1: spec.replicas in body should be greater than or equal to 0"
    )
    obj = workload()
    container(obj)["ports"] = [{"containerPort": 70000}]
    cause = only(WORKLOAD.validate(obj))
    assert cause.field == "spec.template.spec.containers[0].ports[0].containerPort"
    assert "should be less than or equal to 65535" in cause.message

    obj = workload()
    container(obj)["name"] = "Web_1"
    cause = only(WORKLOAD.validate(obj))
    assert cause.type == "FieldValueInvalid"
    assert "should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'" in cause.message

    obj = workload()
    container(obj)["name"] = "a" * 64
    cause = only(WORKLOAD.validate(obj))
    assert (cause.type, cause.message) == (
        "FieldValueTooLong",
        "Too long: may not be more than 63 bytes",
    )

    obj = workload()
    obj["spec"]["template"]["spec"]["containers"] = []
    cause = only(WORKLOAD.validate(obj))
    assert cause.message.endswith(
        "spec.template.spec.containers in body should have at least 1 items"
    )


def test_formats_are_checked_on_strings() -> None:
    obj = workload()
    obj["status"] = {
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Done",
                "message": "",
                "lastTransitionTime": "yesterday",
            }
        ]
    }
    cause = only(WORKLOAD.validate(obj))
    assert cause.field == "status.conditions[0].lastTransitionTime"
    assert "must be of type date-time" in cause.message

    lease = _type("leases").validator
    ok = {"spec": {"renewTime": "2026-11-27T03:00:00.123456Z", "holderIdentity": "a"}}
    assert lease.validate(ok) == []
    assert only(lease.validate({"spec": {"acquireTime": "2026-13-01T00:00:00Z"}}))

    secret = _type("secrets").validator
    assert secret.validate({"data": {"a": "aGVsbG8="}}) == []
    assert only(secret.validate({"data": {"a": "not base64!"}})).field == "data[a]"


def test_int_or_string_and_quantities() -> None:
    service = _type("svc").validator
    spec: dict[str, Any] = {"ports": [{"port": 80, "targetPort": "http"}]}
    assert service.validate({"spec": spec}) == []
    spec["ports"][0]["targetPort"] = True
    cause = only(service.validate({"spec": spec}))
    assert cause.message.endswith('must be of type integer,string: "boolean"')

    obj = workload()
    container(obj)["resources"] = {"requests": {"cpu": "100m", "memory": 1024}}
    assert WORKLOAD.validate(obj) == []
    container(obj)["resources"] = {"limits": {"memory": "lots"}}
    assert (
        only(WORKLOAD.validate(obj)).field
        == "spec.template.spec.containers[0].resources.limits[memory]"
    )


def test_map_values_are_validated_under_bracketed_keys() -> None:
    obj = workload()
    obj["spec"]["template"]["spec"]["nodeSelector"] = {"disk": 1}
    assert only(WORKLOAD.validate(obj)).field == "spec.template.spec.nodeSelector[disk]"


def test_list_map_duplicates_count_defaults_as_keys() -> None:
    obj = workload()
    obj["spec"]["template"]["spec"]["containers"].append({"name": "web", "image": "other"})
    cause = only(WORKLOAD.validate(obj))
    assert (cause.type, cause.field) == ("FieldValueDuplicate", "spec.template.spec.containers[1]")
    assert cause.message == 'Duplicate value: {"name":"web"}'

    # A key with a schema default counts with that default: both ports below are 8080/TCP.
    ports = compile_schema(
        {
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["port", "protocol"],
            "items": {
                "type": "object",
                "required": ["port"],
                "properties": {"port": {"type": "integer"}, "protocol": {"type": "string", "default": "TCP"}},
            },
        },
        resource=False,
    )
    assert only(ports.validate([{"port": 8080, "protocol": "TCP"}, {"port": 8080}])).field == "[1]"
    assert ports.validate([{"port": 8080, "protocol": "UDP"}, {"port": 8080}]) == []


def test_set_lists_refuse_duplicates() -> None:
    obj = workload()
    container(obj)["securityContext"] = {"capabilities": {"drop": ["ALL", "NET_RAW", "ALL"]}}
    cause = only(WORKLOAD.validate(obj))
    assert cause == Cause(
        "FieldValueDuplicate",
        "spec.template.spec.containers[0].securityContext.capabilities.drop[2]",
        'Duplicate value: "ALL"',
    )


def test_null_is_refused_unless_nullable() -> None:
    assert only(WORKLOAD.validate(workload(replicas=None))).message.endswith(
        'must be of type integer: "null"'
    )
    event = _type("events").validator
    assert event.validate({"firstTimestamp": None, "reason": "Started", "count": 1}) == []


def test_the_root_must_be_an_object() -> None:
    cause = only(WORKLOAD.validate(["not", "an", "object"]))
    assert cause.field == ""
    assert cause.message.endswith('body must be of type object: "array"')


def test_generic_keywords() -> None:
    schema = compile_schema(
        {
            "type": "object",
            "properties": {
                "ratio": {
                    "type": "number",
                    "exclusiveMinimum": True,
                    "minimum": 0,
                    "multipleOf": 0.5,
                },
                "tags": {
                    "type": "array",
                    "items": {"type": "string"},
                    "maxItems": 2,
                    "uniqueItems": True,
                },
                "labels": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "maxProperties": 1,
                },
                "either": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
                "any": {"anyOf": [{"type": "integer"}, {"type": "boolean"}]},
                "both": {"type": "string", "allOf": [{"minLength": 2}, {"pattern": "^a"}]},
                "never": {"type": "string", "not": {"enum": ["forbidden"]}},
            },
        }
    )
    good = {
        "ratio": 1.5,
        "tags": ["a"],
        "labels": {"a": "b"},
        "either": 1,
        "any": True,
        "both": "ab",
        "never": "x",
    }
    assert schema.validate(good) == []
    bad = {
        "ratio": 0,
        "tags": ["a", "a", "b"],
        "labels": {"a": "b", "c": "d"},
        "either": 1.5,
        "any": "x",
        "both": "b",
        "never": "forbidden",
    }
    found = {(c.type, c.field) for c in schema.validate(bad)}
    assert ("FieldValueInvalid", "ratio") in found
    assert ("FieldValueTooMany", "tags") in found
    assert ("FieldValueDuplicate", "tags[1]") in found
    assert ("FieldValueTooMany", "labels") in found
    assert ("FieldValueInvalid", "either") in found
    assert ("FieldValueInvalid", "any") in found
    assert ("FieldValueInvalid", "both") in found
    assert ("FieldValueInvalid", "never") in found
    messages = " | ".join(c.message for c in schema.validate(bad))
    assert "ratio in body should be greater than 0" in messages
    assert "must validate one and only one schema (oneOf)" in messages
    assert "must validate at least one schema (anyOf)" in messages
    assert "must not validate the schema (not)" in messages
    assert "Too many: 3: must have at most 2 items" in messages


def test_module_functions_take_raw_or_compiled_schemas() -> None:
    raw = _type("workloads").schema
    assert schemas.validate(workload(replicas="x"), raw) == WORKLOAD.validate(
        workload(replicas="x")
    )
    assert schemas.unknown_fields(workload(bogus=1), WORKLOAD) == ["spec.bogus"]
    assert schemas.prune(workload(bogus=1), raw) == workload()
    assert schemas.apply_defaults(workload(), raw)["spec"]["replicas"] == 1


# -- unknown fields and pruning ---------------------------------------------------------------


def test_unknown_fields_paths() -> None:
    obj = workload(bogus=1)
    container(obj)["imagee"] = "typo"
    obj["metadata"]["labelz"] = {}
    obj["status"] = {"kopf": {"progress": 1}}
    obj["extra"] = True
    assert sorted(WORKLOAD.unknown_fields(obj)) == [
        "extra",
        "metadata.labelz",
        "spec.bogus",
        "spec.template.spec.containers[0].imagee",
        "status.kopf",
    ]


def test_preserved_and_mapped_fields_are_not_unknown() -> None:
    obj = workload()
    spec = obj["spec"]["template"]["spec"]
    spec["volumes"] = [{"name": "data", "emptyDir": {"medium": "Memory"}}]
    spec["affinity"] = {"nodeAffinity": {"anything": [1, 2]}}
    spec["nodeSelector"] = {"any-key": "v"}
    obj["metadata"].update(labels={"x": "y"}, ownerReferences=[{"any": "thing"}], managedFields=[])
    assert WORKLOAD.unknown_fields(obj) == []
    event = _type("events").validator
    assert event.unknown_fields({"involvedObject": {"kind": "X", "new": 1}, "future": {}}) == []


def test_prune_drops_unknown_fields_and_copies() -> None:
    obj = workload(bogus=1)
    container(obj)["imagee"] = "typo"
    obj["metadata"]["labelz"] = {}
    obj["spec"]["template"]["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    before = copy.deepcopy(obj)
    pruned = WORKLOAD.prune(obj)
    assert obj == before
    assert WORKLOAD.unknown_fields(pruned) == []
    assert "bogus" not in pruned["spec"]
    assert "imagee" not in container(pruned)
    assert "labelz" not in pruned["metadata"]
    assert pruned["spec"]["template"]["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]
    pruned["spec"]["template"]["spec"]["volumes"][0]["emptyDir"]["x"] = 1
    assert obj["spec"]["template"]["spec"]["volumes"][0]["emptyDir"] == {}


# -- defaults ---------------------------------------------------------------------------------


def test_workload_defaults() -> None:
    obj = workload()
    container(obj)["ports"] = [{"containerPort": 8080}]
    container(obj)["readinessProbe"] = {"httpGet": {"port": 8080}}
    before = copy.deepcopy(obj)
    defaulted = WORKLOAD.apply_defaults(obj)
    assert obj == before
    spec = defaulted["spec"]
    assert spec["replicas"] == 1
    assert spec["revisionHistoryLimit"] == 10
    # strategy has a default of its own ({}), so it is created, then defaulted inside.
    assert spec["strategy"] == {"type": "RollingUpdate"}
    instance = spec["template"]["spec"]
    assert instance["restartPolicy"] == "Always"
    assert instance["terminationGracePeriodSeconds"] == 30
    # Nothing is defaulted inside list items (see docs/architecture.md): a client-side
    # `kubectl apply` replaces lists whole, so a stored default would read as a change.
    first = instance["containers"][0]
    assert first["ports"] == [{"containerPort": 8080}]
    assert first["readinessProbe"] == {"httpGet": {"port": 8080}}
    # Missing parents without defaults are not invented.
    assert "livenessProbe" not in first
    assert "selector" not in spec
    assert "status" not in defaulted
    assert WORKLOAD.validate(defaulted) == []


def test_defaults_keep_given_values_and_replace_disallowed_nulls() -> None:
    defaulted = WORKLOAD.apply_defaults(
        workload(replicas=None, paused=None, revisionHistoryLimit=2)
    )
    assert defaulted["spec"]["replicas"] == 1
    assert "paused" not in defaulted["spec"]
    assert defaulted["spec"]["revisionHistoryLimit"] == 2


def test_node_spec_defaults_to_an_empty_object() -> None:
    node = _type("no").validator
    assert node.apply_defaults({"metadata": {"name": "n1"}})["spec"] == {}


def test_embedded_resources_get_an_envelope() -> None:
    schema = compile_schema(
        {
            "type": "object",
            "properties": {
                "template": {
                    "type": "object",
                    "x-kubernetes-embedded-resource": True,
                    "properties": {
                        "spec": {"type": "object", "properties": {"n": {"type": "integer"}}}
                    },
                }
            },
        }
    )
    obj = {
        "template": {
            "apiVersion": "v1",
            "kind": "X",
            "metadata": {"name": "a", "x": 1},
            "spec": {"n": 1},
        }
    }
    assert schema.validate(obj) == []
    assert schema.unknown_fields(obj) == ["template.metadata.x"]


# -- malformed schemas ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"type": "int"}, 'openAPIV3Schema.type: Unsupported value: "int"'),
        ({"type": "object", "propertes": {}}, 'openAPIV3Schema: unknown field "propertes"'),
        ({"$ref": "#/x"}, "openAPIV3Schema.$ref: Forbidden"),
        (
            {"type": "object", "properties": {"a": {"type": "string", "pattern": "("}}},
            "openAPIV3Schema.properties[a].pattern: Invalid value",
        ),
        (
            {"type": "object", "properties": {"a": {"type": "array"}}},
            "openAPIV3Schema.properties[a].items: Required value",
        ),
        (
            {"type": "object", "properties": {}, "additionalProperties": {"type": "string"}},
            "mutual exclusive",
        ),
        (
            {
                "type": "object",
                "properties": {"n": {"type": "integer", "minimum": 1, "default": 0}},
            },
            "openAPIV3Schema.properties[n].default: Invalid value: 0",
        ),
        (
            {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
                "items": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
            "must be required or have a default",
        ),
        ({"type": "string", "x-kubernetes-int-or-string": True}, "must be empty"),
        ({"type": "string", "maxLength": -1}, "maxLength: Invalid value: -1"),
        ({"type": "object", "properties": {"a": "string"}}, "properties[a]: Invalid value"),
        ({"type": "string", "nullable": "yes"}, "nullable: Invalid value"),
    ],
)
def test_malformed_schemas_raise_crd_errors_naming_the_keyword(
    schema: dict[str, Any], message: str
) -> None:
    with pytest.raises(CRDError) as caught:
        compile_schema(schema, resource=False)
    assert message in str(caught.value)


# -- robustness -------------------------------------------------------------------------------

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["name", "image", "spec", "replicas", "ports", "metadata", "x", "protocol"]
            )
            | st.text(max_size=6),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)

VALIDATORS: list[CompiledSchema] = [t.validator for t in REGISTRY.all()]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))
    return found


def _exercise(validator: CompiledSchema, value: Any) -> None:
    causes = validator.validate(value)
    assert all(isinstance(c, Cause) for c in causes)
    # The fast path must never accept what the precise walk refuses.
    precise: list[Cause] = []
    validator._root.check(value, "", precise)
    assert (causes == []) == (precise == [])
    assert all(isinstance(p, str) for p in validator.unknown_fields(value))
    pruned = validator.prune(value)
    assert validator.unknown_fields(pruned) == []
    validator.apply_defaults(value)
    validator.apply_defaults(pruned)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=JSON, index=st.integers(min_value=0, max_value=len(VALIDATORS) - 1))
def test_random_json_never_crashes_any_builtin_schema(value: Any, index: int) -> None:
    _exercise(VALIDATORS[index], value)


RICH_WORKLOAD = workload(
    replicas=2,
    strategy={"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}},
)
container(RICH_WORKLOAD).update(
    ports=[{"name": "http", "containerPort": 80}],
    env=[{"name": "A", "value": "1"}],
    resources={"requests": {"cpu": "1"}},
    readinessProbe={"tcpSocket": {"port": 80}},
    securityContext={"capabilities": {"drop": ["ALL"]}},
)
RICH_PATHS = _paths(RICH_WORKLOAD)


@settings(max_examples=400, deadline=None)
@given(path=st.sampled_from(RICH_PATHS), value=JSON)
def test_random_json_anywhere_in_a_workload_never_crashes(
    path: tuple[Any, ...], value: Any
) -> None:
    obj = copy.deepcopy(RICH_WORKLOAD)
    if not path:
        obj = value
    else:
        parent = obj
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = value
    _exercise(WORKLOAD, obj)


def test_deep_nesting_in_preserved_fields_is_copied_without_recursion() -> None:
    deep: Any = "bottom"
    for _ in range(5000):
        deep = [deep]
    obj = workload()
    obj["spec"]["template"]["spec"]["volumes"] = [{"name": "v", "deep": deep}]
    assert WORKLOAD.validate(obj) == []
    assert WORKLOAD.prune(obj)["spec"]["template"]["spec"]["volumes"][0]["deep"] is not deep
    WORKLOAD.apply_defaults(obj)
