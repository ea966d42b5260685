"""The kind registry: built-in types, name resolution, store keys, and CRD error messages."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from hypermesh.resources import registry
from hypermesh.resources.errors import CRDError
from hypermesh.resources.registry import (
    CRD_DIR,
    PrinterColumn,
    Registry,
    ResourceType,
    builtin_types,
    load_crd_file,
    types_from_crd,
)


def crd(**changes: Any) -> dict[str, Any]:
    """A small valid CRD (kopf's peering kind), with top-level spec fields replaced."""
    body: dict[str, Any] = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "kopfpeerings.kopf.dev"},
        "spec": {
            "group": "kopf.dev",
            "scope": "Namespaced",
            "names": {"plural": "kopfpeerings", "kind": "KopfPeering", "shortNames": ["kp"]},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    body["spec"].update(changes)
    return body


# -- built-in types ---------------------------------------------------------------------------


def test_builtin_types_are_the_served_kinds() -> None:
    found = {(t.group, t.version, t.kind): t for t in builtin_types()}
    assert set(found) == {
        ("", "v1", "Namespace"),
        ("", "v1", "Event"),
        ("", "v1", "Secret"),
        ("coordination.k8s.io", "v1", "Lease"),
        ("scheduling.k8s.io", "v1", "PriorityClass"),
        ("certificates.k8s.io", "v1", "CertificateSigningRequest"),
        ("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
        ("hypermesh.io", "v1", "Node"),
        ("hypermesh.io", "v1", "Workload"),
        ("hypermesh.io", "v1", "Instance"),
        ("hypermesh.io", "v1", "Service"),
        ("hypermesh.io", "v1", "Endpoints"),
        ("hypermesh.io", "v1", "Certificate"),
        ("hypermesh.io", "v1", "CertificateRevocation"),
        ("hypermesh.io", "v1", "GitSync"),
        ("rbac.authorization.k8s.io", "v1", "Role"),
        ("rbac.authorization.k8s.io", "v1", "ClusterRole"),
        ("rbac.authorization.k8s.io", "v1", "RoleBinding"),
        ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding"),
    }
    cluster_scoped = {t.kind for t in found.values() if not t.namespaced}
    assert cluster_scoped == {"Namespace", "CustomResourceDefinition", "Node", "PriorityClass", "ClusterRole", "ClusterRoleBinding", "CertificateSigningRequest", "CertificateRevocation"}
    without_status = {t.kind for t in found.values() if not t.has_status}
    assert without_status == {"Event", "Secret", "Lease", "PriorityClass", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding", "CertificateRevocation"}
    workload = found[("hypermesh.io", "v1", "Workload")]
    assert (workload.plural, workload.singular, workload.list_kind) == (
        "workloads",
        "workload",
        "WorkloadList",
    )
    assert workload.categories == ("all", "hypermesh")
    assert [c.name for c in workload.printer_columns[:5]] == [
        "Replicas",
        "Ready",
        "Up-to-date",
        "Available",
        "Age",
    ]
    assert workload.printer_columns[4] == PrinterColumn(
        name="Age", type="date", json_path=".metadata.creationTimestamp"
    )


# A record written once, with nothing for a controller to observe or report.
_RECORDS = frozenset({"CertificateRevocation"})


def test_every_hypermesh_kind_has_status_conditions_and_observed_generation() -> None:
    for resource_type in builtin_types():
        if resource_type.group != "hypermesh.io" or resource_type.kind in _RECORDS:
            continue
        status = resource_type.schema["properties"]["status"]["properties"]
        assert status["observedGeneration"]["type"] == "integer", resource_type.kind
        conditions = status["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map", resource_type.kind
        assert conditions["x-kubernetes-list-map-keys"] == ["type"], resource_type.kind
        assert resource_type.has_status


def test_crd_dir_is_the_checkout_and_the_package_carries_the_same_files() -> None:
    repo_root = Path(__file__).resolve().parents[2]
    assert CRD_DIR == repo_root / "crds"
    packaged = Path(registry.__file__).parent / "crds"
    assert sorted(p.name for p in packaged.glob("*.yaml")) == sorted(
        p.name for p in CRD_DIR.glob("*.yaml")
    )
    for path in CRD_DIR.glob("*.yaml"):
        assert (packaged / path.name).read_bytes() == path.read_bytes()


def test_schemas_always_declare_the_envelope_and_compile_once() -> None:
    for resource_type in builtin_types():
        properties = resource_type.schema["properties"]
        assert properties["apiVersion"] == {"type": "string"}
        assert properties["kind"] == {"type": "string"}
        assert properties["metadata"]["type"] == "object"
        assert resource_type.validator is resource_type.validator


# -- resolution -------------------------------------------------------------------------------


@pytest.fixture
def reg() -> Registry:
    return Registry.with_builtins()


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("workloads", "Workload"),
        ("workload", "Workload"),
        ("wl", "Workload"),
        ("Workload", "Workload"),
        ("WORKLOADS", "Workload"),
        ("workloads.hypermesh.io", "Workload"),
        ("workloads.v1.hypermesh.io", "Workload"),
        ("inst", "Instance"),
        ("no", "Node"),
        ("svc", "Service"),
        ("ep", "Endpoints"),
        ("endpoints", "Endpoints"),
        ("cert", "Certificate"),
        ("gs", "GitSync"),
        ("ns", "Namespace"),
        ("ev", "Event"),
        ("secret", "Secret"),
        ("leases", "Lease"),
        ("crd", "CustomResourceDefinition"),
        ("crds", "CustomResourceDefinition"),
        ("customresourcedefinitions.apiextensions.k8s.io", "CustomResourceDefinition"),
    ],
)
def test_resolve_user_typed_names(reg: Registry, name: str, kind: str) -> None:
    found = reg.resolve(name)
    assert found is not None and found.kind == kind


def test_resolve_unknown_names(reg: Registry) -> None:
    assert reg.resolve("pods") is None
    assert reg.resolve("workloads.example.com") is None
    assert reg.resolve_all("nothing") == []


def test_lookups_by_plural_kind_and_short_name(reg: Registry) -> None:
    workload = reg.by_plural("hypermesh.io", "v1", "workloads")
    assert workload is not None and workload.kind == "Workload"
    assert reg.by_kind("hypermesh.io", "v1", "Workload") is workload
    assert reg.by_kind("", "v1", "Namespace") is reg.by_plural("", "v1", "namespaces")
    assert reg.by_plural("hypermesh.io", "v2", "workloads") is None
    assert [t.kind for t in reg.by_short_name("wl")] == ["Workload"]


def test_groups_list_versions_preferred_first(reg: Registry) -> None:
    multi = crd(
        versions=[
            {**crd()["spec"]["versions"][0], "name": "v1beta1", "storage": False},
            {**crd()["spec"]["versions"][0], "name": "v2alpha1", "storage": False},
            crd()["spec"]["versions"][0],
        ]
    )
    for resource_type in types_from_crd(multi):
        reg.add(resource_type)
    groups = reg.groups()
    assert groups[""] == ["v1"]
    assert groups["hypermesh.io"] == ["v1"]
    assert groups["kopf.dev"] == ["v1", "v1beta1", "v2alpha1"]
    assert list(groups)[:2] == ["", "hypermesh.io"]
    # A user name resolves to the preferred version.
    found = reg.resolve("kp")
    assert found is not None and found.version == "v1"


def test_generation_counts_changes(reg: Registry) -> None:
    start = reg.generation
    (peering,) = types_from_crd(crd())
    reg.add(peering)
    assert reg.generation == start + 1
    assert reg.resolve("kopfpeerings.kopf.dev") == peering
    assert reg.remove("kopf.dev", "kopfpeerings") == [peering]
    assert reg.generation == start + 2
    assert reg.remove("kopf.dev", "kopfpeerings") == []
    assert reg.generation == start + 2
    assert reg.resolve("kp") is None


# -- keys and names ---------------------------------------------------------------------------


def test_store_keys(reg: Registry) -> None:
    workload = reg.resolve("wl")
    node = reg.resolve("no")
    namespace = reg.resolve("ns")
    assert workload is not None and node is not None and namespace is not None
    assert workload.key_prefix(None) == "/registry/hypermesh.io/workloads/"
    assert workload.key_prefix("default") == "/registry/hypermesh.io/workloads/default/"
    assert workload.key("default", "web") == "/registry/hypermesh.io/workloads/default/web"
    assert node.key(None, "node-1") == "/registry/hypermesh.io/nodes/node-1"
    assert namespace.key(None, "default") == "/registry/core/namespaces/default"
    assert namespace.api_version == "v1"
    assert workload.api_version == "hypermesh.io/v1"
    assert workload.resource == "workloads.hypermesh.io"
    assert namespace.resource == "namespaces"


def test_resource_types_compare_by_identity_fields_not_schema() -> None:
    (a,) = types_from_crd(crd())
    (b,) = types_from_crd(crd())
    assert a == b and hash(a) == hash(b)
    assert {a, b} == {a}


# -- reading CRDs -----------------------------------------------------------------------------


def test_defaults_of_names_and_columns() -> None:
    (peering,) = types_from_crd(crd())
    assert (peering.singular, peering.list_kind) == ("kopfpeering", "KopfPeeringList")
    assert peering.printer_columns == (
        PrinterColumn(
            name="Age",
            type="date",
            json_path=".metadata.creationTimestamp",
            description="Time since the object was created.",
        ),
    )
    assert not peering.has_status and peering.namespaced


def test_unserved_versions_are_left_out() -> None:
    body = crd(
        versions=[
            crd()["spec"]["versions"][0],
            {**crd()["spec"]["versions"][0], "name": "v0", "storage": False, "served": False},
        ]
    )
    assert [t.version for t in types_from_crd(body)] == ["v1"]


def _with_version(**changes: Any) -> dict[str, Any]:
    version = {**crd()["spec"]["versions"][0], **changes}
    return crd(versions=[version])


BAD_CRDS: list[tuple[str, dict[str, Any], str]] = [
    (
        "apiVersion",
        {**crd(), "apiVersion": "apiextensions.k8s.io/v1beta1"},
        "apiVersion: Unsupported value",
    ),
    ("no group", crd(group=None), "spec.group: Required value"),
    ("core group", crd(group=""), "spec.group: Required value"),
    (
        "group without dot",
        crd(group="kopf"),
        'spec.group: Invalid value: "kopf": should be a domain',
    ),
    (
        "bad plural",
        crd(names={"plural": "Kopf_Peerings", "kind": "KopfPeering"}),
        "spec.names.plural: Invalid value",
    ),
    ("no kind", crd(names={"plural": "kopfpeerings"}), "spec.names.kind: Required value"),
    (
        "bad short name",
        crd(names={"plural": "kopfpeerings", "kind": "KopfPeering", "shortNames": ["K P"]}),
        "spec.names.shortNames[0]: Invalid value",
    ),
    ("scope", crd(scope="Global"), 'spec.scope: Unsupported value: "Global"'),
    ("no versions", crd(versions=[]), "spec.versions: Required value"),
    (
        "two storage versions",
        crd(
            versions=[crd()["spec"]["versions"][0], {**crd()["spec"]["versions"][0], "name": "v2"}]
        ),
        "exactly one version marked as storage version",
    ),
    (
        "duplicate version",
        crd(
            versions=[
                crd()["spec"]["versions"][0],
                {**crd()["spec"]["versions"][0], "storage": False},
            ]
        ),
        'spec.versions[1].name: Duplicate value: "v1"',
    ),
    ("served missing", _with_version(served=None), "spec.versions[0].served: Required value"),
    ("no schema", _with_version(schema=None), "spec.versions[0].schema: Required value"),
    (
        "root not object",
        _with_version(schema={"openAPIV3Schema": {"type": "string"}}),
        'openAPIV3Schema.type: Required value: must be "object" at the root',
    ),
    (
        "bad keyword deep inside",
        _with_version(
            schema={
                "openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {"type": "object", "properties": {"n": {"type": "int"}}}
                    },
                }
            }
        ),
        (
            "spec.versions[0].schema.openAPIV3Schema.properties[spec].properties[n].type: "
            'Unsupported value: "int"'
        ),
    ),
    (
        "printer column type",
        _with_version(additionalPrinterColumns=[{"name": "X", "type": "float", "jsonPath": ".x"}]),
        "spec.versions[0].additionalPrinterColumns[0].type: Unsupported value",
    ),
    (
        "printer column path",
        _with_version(additionalPrinterColumns=[{"name": "X", "type": "string", "jsonPath": "x"}]),
        'additionalPrinterColumns[0].jsonPath: Invalid value: "x"',
    ),
]


@pytest.mark.parametrize(
    ("body", "message"), [(b, m) for _, b, m in BAD_CRDS], ids=[n for n, _, _ in BAD_CRDS]
)
def test_malformed_crds_are_refused_with_precise_messages(
    body: dict[str, Any], message: str
) -> None:
    with pytest.raises(CRDError) as caught:
        types_from_crd(body)
    assert message in str(caught.value)


def test_metadata_name_must_match() -> None:
    body = crd()
    body["metadata"]["name"] = "peerings.kopf.dev"
    with pytest.raises(CRDError, match=r'metadata.name: .*"kopfpeerings.kopf.dev"'):
        types_from_crd(body)


def test_core_group_is_for_builtins_only() -> None:
    body = copy.deepcopy(crd(group=""))
    body["metadata"]["name"] = "kopfpeerings"
    (core,) = types_from_crd(body, builtin=True)
    assert core.group == "" and core.api_version == "v1"
    assert core.key_prefix(None) == "/registry/core/kopfpeerings/"


def test_crd_files_name_themselves_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(crd(scope="Global")))
    with pytest.raises(CRDError, match=r"^broken.yaml: spec.scope"):
        load_crd_file(path)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump_all([crd(), None]))
    assert [t.kind for t in load_crd_file(good)] == ["KopfPeering"]


def test_a_hand_built_type_compiles_lazily() -> None:
    resource_type = ResourceType(
        group="example.com",
        version="v1",
        kind="Thing",
        plural="things",
        singular="thing",
        list_kind="ThingList",
        namespaced=True,
        schema={"type": "object", "properties": {"spec": {"type": "object"}}},
    )
    assert resource_type.validator.validate({"spec": 1})[0].field == "spec"
    assert resource_type.validator is resource_type.validator
