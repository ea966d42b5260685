"""The CRDs in crds/ and the pydantic models in hypermesh.resources say the same thing.

Both are written by hand, so this test is what keeps them one contract: for every hypermesh.io
kind it flattens the CRD's openAPIV3Schema and the model's JSON schema into
`{field path: shape}` (type, format, enum, default, bounds, pattern, required fields, openness)
and compares them, then pushes objects through both directions: model-built objects validate
under the CRD, a maximal object generated from the CRD round-trips through the model unchanged,
and the manifests of ARCHITECTURE.md validate and default the same way in both.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest
import yaml

from hypermesh.resources import models
from hypermesh.resources.meta import Resource
from hypermesh.resources.registry import CRD_DIR, ResourceType, load_crd_file

Shape = dict[str, Any]

_CONSTRAINTS = ("minimum", "maximum", "minLength", "maxLength", "pattern", "minItems", "maxItems")
# The envelope is served the same for every kind and checked by the API server, not the schema.
_ENVELOPE = ("apiVersion", "kind", "metadata")


def _crd_types() -> dict[str, ResourceType]:
    types = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for resource_type in load_crd_file(path):
            types[resource_type.kind] = resource_type
    return types


CRD_TYPES = _crd_types()


# -- flattening a CRD schema ------------------------------------------------------------------


def _crd_shape(schema: dict[str, Any], path: str, out: dict[str, Shape]) -> None:
    shape: Shape = {key: schema[key] for key in _CONSTRAINTS if key in schema}
    if "enum" in schema:
        shape["enum"] = frozenset(schema["enum"])
    if "default" in schema:
        shape["default"] = schema["default"]
    if schema.get("format") == "date-time":
        shape["format"] = "date-time"
    if schema.get("x-kubernetes-int-or-string"):
        shape["type"] = "int-or-string"
    elif schema.get("type") == "object":
        if "additionalProperties" in schema and isinstance(schema["additionalProperties"], dict):
            shape["type"] = "map"
            _crd_shape(schema["additionalProperties"], f"{path}{{}}", out)
        else:
            shape["type"] = "object"
            shape["open"] = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
            shape["required"] = frozenset(schema.get("required", ()))
            for name, sub in schema.get("properties", {}).items():
                _crd_shape(sub, f"{path}.{name}", out)
    elif schema.get("type") == "array":
        shape["type"] = "array"
        _crd_shape(schema["items"], f"{path}[]", out)
    else:
        shape["type"] = schema["type"]
    out[path] = shape


# -- flattening a pydantic JSON schema --------------------------------------------------------


def _resolve(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inlines $ref and strips Optional's null branch, keeping sibling keywords (default)."""
    schema = dict(schema)
    if "$ref" in schema:
        target = defs[schema.pop("$ref").rsplit("/", 1)[-1]]
        schema = {**_resolve(target, defs), **schema}
    if "allOf" in schema and len(schema["allOf"]) == 1:
        schema = {**_resolve(schema.pop("allOf")[0], defs), **schema}
    if "anyOf" in schema:
        branches = [b for b in schema["anyOf"] if b.get("type") != "null"]
        if len(branches) == 1:
            rest = {k: v for k, v in schema.items() if k != "anyOf"}
            schema = {**_resolve(branches[0], defs), **rest}
        else:
            schema["anyOf"] = [_resolve(b, defs) for b in branches]
    if schema.get("default", 0) is None:
        del schema["default"]
    return schema


def _model_shape(
    schema: dict[str, Any], defs: dict[str, Any], path: str, out: dict[str, Shape]
) -> None:
    schema = _resolve(schema, defs)
    shape: Shape = {}
    if "anyOf" in schema:
        types = sorted(branch.get("type") for branch in schema["anyOf"])
        assert types == ["integer", "string"], f"{path}: unexpected union {schema['anyOf']}"
        shape["type"] = "int-or-string"
        for branch in schema["anyOf"]:
            shape.update({key: branch[key] for key in _CONSTRAINTS if key in branch})
    shape.update({key: schema[key] for key in _CONSTRAINTS if key in schema})
    if "enum" in schema:
        shape["enum"] = frozenset(schema["enum"])
    elif "const" in schema:
        shape["enum"] = frozenset([schema["const"]])
    if "default" in schema:
        shape["default"] = schema["default"]
    if schema.get("format") == "date-time":
        shape["format"] = "date-time"
    kind = schema.get("type")
    if "anyOf" in schema:
        pass
    elif kind == "object":
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict) and additional:
            shape["type"] = "map"
            _model_shape(additional, defs, f"{path}{{}}", out)
        else:
            shape["type"] = "object"
            shape["open"] = additional is True or (
                additional is None and "properties" not in schema
            )
            shape["required"] = frozenset(schema.get("required", ()))
            for name, sub in schema.get("properties", {}).items():
                _model_shape(sub, defs, f"{path}.{name}", out)
    elif kind == "array":
        shape["type"] = "array"
        _model_shape(schema["items"], defs, f"{path}[]", out)
    else:
        assert kind is not None, f"{path}: untyped model field {schema}"
        shape["type"] = kind
    out[path] = shape


def _without_envelope(shapes: dict[str, Shape]) -> dict[str, Shape]:
    kept = {
        path: shape
        for path, shape in shapes.items()
        if not any(path == f".{name}" or path.startswith(f".{name}.") for name in _ENVELOPE)
    }
    kept[""] = {**kept[""], "required": kept[""]["required"] - set(_ENVELOPE)}
    return kept


def crd_shapes(kind: str) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    _crd_shape(CRD_TYPES[kind].schema, "", shapes)
    return _without_envelope(shapes)


def model_shapes(model: type[Resource]) -> dict[str, Shape]:
    schema = model.model_json_schema(by_alias=True)
    shapes: dict[str, Shape] = {}
    _model_shape(schema, schema.get("$defs", {}), "", shapes)
    return _without_envelope(shapes)


def _diff(crd: dict[str, Shape], model: dict[str, Shape]) -> list[str]:
    problems = [f"only in the CRD: {p} {crd[p]}" for p in sorted(crd.keys() - model.keys())]
    problems += [f"only in the model: {p} {model[p]}" for p in sorted(model.keys() - crd.keys())]
    for path in sorted(crd.keys() & model.keys()):
        if crd[path] != model[path]:
            problems.append(f"differs at {path or '<root>'}: crd={crd[path]} model={model[path]}")
    return problems


KINDS = sorted(models.KINDS)


def test_every_crd_has_a_model_and_back() -> None:
    assert set(CRD_TYPES) == set(models.KINDS)
    for kind, model in models.KINDS.items():
        assert CRD_TYPES[kind].api_version == models.API_VERSION
        assert model.model_fields["api_version"].default == models.API_VERSION
        assert model.model_fields["kind"].default == kind


@pytest.mark.parametrize("kind", KINDS)
def test_field_paths_types_required_enums_and_defaults_agree(kind: str) -> None:
    crd = crd_shapes(kind)
    model = model_shapes(models.KINDS[kind])
    assert len(crd) > 3
    problems = _diff(crd, model)
    assert not problems, "\n".join(problems)


def test_the_comparison_notices_a_difference() -> None:
    # Guards the guard: a changed enum, a dropped field and a new default must all show up.
    crd = crd_shapes("Workload")
    model = model_shapes(models.Workload)
    model[".spec.strategy.type"] = {**model[".spec.strategy.type"], "enum": frozenset({"Recreate"})}
    del model[".spec.paused"]
    model[".spec.minReadySeconds"] = {**model[".spec.minReadySeconds"], "default": 0}
    problems = _diff(crd, model)
    assert len(problems) == 3, problems


def test_workload_template_is_exactly_the_instance_spec() -> None:
    template = CRD_TYPES["Workload"].schema["properties"]["spec"]["properties"]["template"]
    assert template["properties"]["spec"] == CRD_TYPES["Instance"].schema["properties"]["spec"]


# -- objects in both directions ---------------------------------------------------------------

_NOW = datetime.datetime(2026, 11, 27, 3, 0, tzinfo=datetime.UTC)


def _condition(type: str = "Ready") -> models.Condition:
    return models.Condition(
        type=type, status="True", reason="AllGood", message="", last_transition_time=_NOW
    )


def _instance_spec() -> models.InstanceSpec:
    probe = models.Probe(http_get=models.HTTPGetAction(path="/healthz", port="http"))
    return models.InstanceSpec(
        containers=[
            models.Container(
                name="web",
                image="busybox",
                command=["httpd", "-f", "-p", "8080"],
                env=[models.EnvVar(name="MODE", value="prod")],
                ports=[models.ContainerPort(name="http", container_port=8080)],
                resources=models.ResourceRequirements(
                    requests={"cpu": "100m", "memory": "32Mi"}, limits={"memory": "64Mi", "cpu": 1}
                ),
                readiness_probe=probe,
                liveness_probe=models.Probe(tcp_socket=models.TCPSocketAction(port=8080)),
                security_context=models.SecurityContext(
                    run_as_user=1000, capabilities=models.Capabilities(drop=["ALL"])
                ),
                volume_mounts=[models.VolumeMount(name="data", mount_path="/data")],
            )
        ],
        node_selector={"disk": "ssd"},
        affinity=models.Affinity(node_affinity={"requiredDuringScheduling": {"terms": []}}),
        tolerations=[models.Toleration(key="dedicated", value="web", effect="NoSchedule")],
        volumes=[models.Volume.model_validate({"name": "data", "emptyDir": {}})],
    )


def _examples() -> list[Resource]:
    meta = models.ObjectMeta(name="web", namespace="default", labels={"app": "web"})
    return [
        models.Workload(
            metadata=meta,
            spec=models.WorkloadSpec(
                replicas=3,
                selector=models.LabelSelector(match_labels={"app": "web"}),
                template=models.InstanceTemplate(
                    metadata=models.TemplateMetadata(labels={"app": "web"}), spec=_instance_spec()
                ),
                strategy=models.WorkloadStrategy(
                    rolling_update=models.RollingUpdate(max_surge=1, max_unavailable="25%")
                ),
            ),
            status=models.WorkloadStatus(
                observed_generation=1,
                replicas=3,
                ready_replicas=2,
                conditions=[
                    models.WorkloadCondition(
                        type="Progressing", status="True", reason="NewReplicaSetAvailable", message="",
                        last_transition_time=_NOW, last_update_time=_NOW,
                    )
                ],
            ),
        ),
        models.Instance(
            metadata=meta,
            spec=_instance_spec(),
            status=models.InstanceStatus(
                phase="Running",
                instance_ip="fd00::1",
                start_time=_NOW,
                conditions=[_condition(), _condition("Initialized")],
                container_statuses=[
                    models.ContainerStatus(
                        name="web",
                        ready=True,
                        restart_count=2,
                        state=models.ContainerState(
                            running=models.ContainerStateRunning(started_at=_NOW)
                        ),
                        last_state=models.ContainerState(
                            terminated=models.ContainerStateTerminated(exit_code=137, signal=9)
                        ),
                    )
                ],
            ),
        ),
        models.Node(
            metadata=models.ObjectMeta(name="node-1"),
            spec=models.NodeSpec(
                taints=[models.Taint(key="dedicated", effect="NoSchedule")],
                instance_cidr="fd00::/64",
            ),
            status=models.NodeStatus(
                capacity={"cpu": 4, "memory": "8Gi"},
                addresses=[models.NodeAddress(type="InternalIP", address="10.0.0.2")],
                node_info=models.NodeInfo(machine_id="abc", agent_version="0.1.0"),
                conditions=[
                    models.NodeCondition(
                        type="Ready",
                        status="True",
                        reason="AgentReady",
                        message="",
                        last_transition_time=_NOW,
                        last_heartbeat_time=_NOW,
                    )
                ],
            ),
        ),
        models.Service(
            metadata=meta,
            spec=models.ServiceSpec(
                selector={"app": "web"},
                ports=[models.ServicePort(name="http", port=80, target_port="http")],
                traffic_policy=models.TrafficPolicy(
                    timeout="5s",
                    retries=models.RetryPolicy(attempts=2, retry_on=["connect-failure"]),
                    circuit_breaker=models.CircuitBreaker(consecutive_errors=5, interval="10s"),
                ),
            ),
        ),
        models.Endpoints(
            metadata=meta,
            endpoints=[models.Endpoint(address="fd00::1", instance_name="web-abc", node_name="n1")],
            ports=[models.EndpointPort(name="http", port=8080)],
        ),
        models.Certificate(
            metadata=models.ObjectMeta(name="web-tls", namespace="default"),
            spec=models.CertificateSpec(
                secret_name="web-tls",
                dns_names=["web.default.svc"],
                usages=["server auth", "digital signature"],
                private_key=models.CertificatePrivateKey(algorithm="Ed25519"),
            ),
            status=models.CertificateStatus(not_after=_NOW, revision=1, serial_number="0a"),
        ),
        models.CertificateRevocation(
            metadata=models.ObjectMeta(name="1f3a"),
            spec=models.CertificateRevocationSpec(
                serial_number="1f3a",
                subject="CN=alice,O=ops",
                reason="keyCompromise",
                revoked_at=_NOW,
                not_after=_NOW,
                certificate_ref=models.CertificateRef(namespace="default", name="web"),
            ),
        ),
        models.GitSync(
            metadata=models.ObjectMeta(name="apps", namespace="default"),
            spec=models.GitSyncSpec(
                url="https://git.example/apps.git",
                ref=models.GitRef(branch="main"),
                path="./deploy",
                depends_on=[models.CrossNamespaceRef(name="base")],
            ),
            status=models.GitSyncStatus(
                last_applied_revision="main@sha1:abc",
                inventory=[models.InventoryEntry(api_version="v1", kind="Secret", name="x")],
            ),
        ),
    ]


@pytest.mark.parametrize("example", _examples(), ids=lambda e: e.kind)
def test_model_built_objects_validate_under_the_crd(example: Resource) -> None:
    validator = CRD_TYPES[example.kind].validator
    obj = example.to_dict()
    assert validator.validate(obj) == []
    assert validator.unknown_fields(obj) == []
    # The models already carry every schema default, so the server adds nothing.
    assert validator.apply_defaults(obj) == obj


# -- a maximal object generated from the CRD ---------------------------------------------------

_STRING_SAMPLES = ("a", "1s", "25%", "web.default.svc")


def _sample_string(schema: dict[str, Any]) -> str:
    if schema.get("format") == "date-time":
        return "2026-11-27T03:00:00Z"
    for sample in _STRING_SAMPLES:
        if "pattern" in schema and not re.search(schema["pattern"], sample):
            continue
        if len(sample) > schema.get("maxLength", 1 << 30) or len(sample) < schema.get(
            "minLength", 0
        ):
            continue
        return sample
    raise AssertionError(f"no sample string fits {schema}")


def maximal(schema: dict[str, Any]) -> Any:
    """A valid value with every declared field present, built from the schema alone."""
    if "enum" in schema:
        return schema["enum"][0]
    if schema.get("x-kubernetes-int-or-string"):
        return max(schema.get("minimum", 1), 1)
    kind = schema.get("type")
    if kind == "object":
        if isinstance(schema.get("additionalProperties"), dict):
            return {"key": maximal(schema["additionalProperties"])}
        value = {name: maximal(sub) for name, sub in schema.get("properties", {}).items()}
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            value["extraField"] = {"kept": [1, "two"]}
        return value
    if kind == "array":
        return [maximal(schema["items"])]
    if kind == "integer":
        return max(schema.get("minimum", 1), 1)
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    return _sample_string(schema)


@pytest.mark.parametrize("kind", KINDS)
def test_a_maximal_crd_object_round_trips_through_the_model(kind: str) -> None:
    resource_type = CRD_TYPES[kind]
    obj = maximal(resource_type.schema)
    obj.update(apiVersion=resource_type.api_version, kind=kind, metadata={"name": "x"})
    assert resource_type.validator.validate(obj) == []
    assert resource_type.validator.unknown_fields(obj) == []
    parsed = models.KINDS[kind].model_validate(obj)
    # Every field survives the model with its wire name and value: aliases and types agree.
    assert parsed.to_dict() == obj


# -- the manifests users read in ARCHITECTURE.md ---------------------------------------------

ARCHITECTURE_MANIFESTS = """
apiVersion: hypermesh.io/v1
kind: Workload
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  replicas: 3
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: busybox
        command: ["httpd", "-f", "-p", "8080"]
        ports: [{name: http, containerPort: 8080}]
        resources: {requests: {cpu: 100m, memory: 32Mi}, limits: {memory: 64Mi}}
---
apiVersion: hypermesh.io/v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: hypermesh.io/v1
kind: Certificate
metadata: {name: web-tls}
spec:
  secretName: web-tls
  dnsNames: [web.default.svc]
  duration: 24h
"""


@pytest.mark.parametrize(
    "manifest", list(yaml.safe_load_all(ARCHITECTURE_MANIFESTS)), ids=lambda m: m["kind"]
)
def test_architecture_manifests_validate_and_default_alike(manifest: dict[str, Any]) -> None:
    validator = CRD_TYPES[manifest["kind"]].validator
    assert validator.validate(manifest) == []
    assert validator.unknown_fields(manifest) == []
    defaulted = validator.apply_defaults(manifest)
    assert validator.validate(defaulted) == []
    # The server's defaults and the model's defaults are the same defaults.
    assert models.KINDS[manifest["kind"]].model_validate(manifest).to_dict() == defaulted


# -- model helpers ----------------------------------------------------------------------------


def test_set_condition_keeps_the_transition_time_while_the_status_holds() -> None:
    later = _NOW + datetime.timedelta(minutes=5)
    conditions = [_condition()]
    same = models.Condition(
        type="Ready", status="True", reason="AllGood", message="", last_transition_time=later
    )
    assert not models.set_condition(conditions, same)
    assert conditions[0].last_transition_time == _NOW
    flipped = same.model_copy(update={"status": "False", "reason": "Broken"})
    assert models.set_condition(conditions, flipped)
    assert conditions[0].last_transition_time == later
    assert models.set_condition(conditions, _condition("Progressing"))
    assert [c.type for c in conditions] == ["Ready", "Progressing"]
    found = models.get_condition(conditions, "Ready")
    assert found is not None and found.status == "False"
    assert models.get_condition(None, "Ready") is None


def test_wire_names_spell_initialisms_like_kubernetes() -> None:
    status = models.InstanceStatus(instance_ip="fd00::1", host_ip="10.0.0.1")
    assert status.to_dict() == {"instanceIP": "fd00::1", "hostIP": "10.0.0.1"}
    assert models.InstanceStatus.from_dict({"instanceIP": "fd00::2"}).instance_ip == "fd00::2"
    assert models.NodeInfo(machine_id="m", system_uuid="u").to_dict() == {
        "machineID": "m",
        "systemUUID": "u",
    }
    with pytest.raises(ValueError):
        models.Container.model_validate({"name": "web", "image": "x", "imagee": "typo"})
