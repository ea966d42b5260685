"""Server-side apply and field ownership, checked through the objects and managedFields produced."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypermesh.api import fieldmanager
from hypermesh.api.fieldmanager import ApplyConflict, FieldManagerError

API = "hypermesh.io/v1"
NOW = "2026-11-27T03:00:00Z"
LATER = "2026-11-27T04:00:00Z"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "properties": {
                "replicas": {"type": "integer"},
                "paused": {"type": "boolean"},
                "selector": {"type": "object", "x-kubernetes-map-type": "atomic"},
                "tags": {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
                "containers": {
                    "type": "array",
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "image": {"type": "string"},
                            "args": {"type": "array", "items": {"type": "string"}},
                            "ports": {
                                "type": "array",
                                "x-kubernetes-list-type": "map",
                                "x-kubernetes-list-map-keys": ["containerPort", "protocol"],
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "containerPort": {"type": "integer"},
                                        "protocol": {"type": "string", "default": "TCP"},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
        "status": {"type": "object"},
    },
}


def workload(spec: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    """An apply configuration; an empty spec is left out, since `spec: {}` would claim `.spec`."""
    config = {
        "apiVersion": API,
        "kind": "Workload",
        "metadata": {"name": "web", "namespace": "default", **metadata},
    }
    if spec:
        config["spec"] = spec
    return config


def apply(live: dict[str, Any] | None, config: dict[str, Any], manager: str, *, force: bool = False,
          now: str = NOW, schema: dict[str, Any] | None = SCHEMA) -> dict[str, Any]:
    return fieldmanager.apply(live, config, manager=manager, force=force, schema=schema, now=now,
                              api_version=API)


def update(old: dict[str, Any] | None, new: dict[str, Any], manager: str, *, now: str = NOW,
           schema: dict[str, Any] | None = SCHEMA, subresource: str = "") -> dict[str, Any]:
    return fieldmanager.update(old, new, manager=manager, schema=schema, now=now, api_version=API,
                               subresource=subresource)


def owned(obj: dict[str, Any], manager: str, operation: str = "Apply") -> set[str]:
    return fieldmanager.owned_fields(obj, manager, operation=operation)


def entry(obj: dict[str, Any], manager: str, operation: str = "Apply") -> dict[str, Any]:
    [found] = [e for e in obj["metadata"]["managedFields"]
               if e["manager"] == manager and e["operation"] == operation]
    return found


def created(spec: dict[str, Any], manager: str = "kubectl") -> dict[str, Any]:
    """An object as the API would store it after `manager` applied `spec` to nothing."""
    obj = apply(None, workload(spec), manager)
    obj["metadata"].update(uid="u-1", resourceVersion="1", generation=1, creationTimestamp=NOW)
    return obj


# --------------------------------------------------------------------------------------------
# The shape of managedFields.


def test_apply_create_records_kubernetes_shaped_entry() -> None:
    config = workload(
        {"replicas": 2, "containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}]},
        labels={"app": "web"},
    )
    obj = apply(None, config, "kubectl")
    assert obj["spec"] == config["spec"]
    assert obj["metadata"]["labels"] == {"app": "web"}
    assert obj["metadata"]["managedFields"] == [
        {
            "manager": "kubectl",
            "operation": "Apply",
            "apiVersion": API,
            "time": NOW,
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {
                    "f:containers": {
                        'k:{"name":"web"}': {
                            ".": {},
                            "f:image": {},
                            "f:name": {},
                            "f:ports": {
                                'k:{"containerPort":80,"protocol":"TCP"}': {
                                    ".": {},
                                    "f:containerPort": {},
                                }
                            },
                        }
                    },
                    "f:replicas": {},
                },
            },
        }
    ]


def test_update_on_create_marks_new_nodes_like_kubernetes_does_for_custom_resources() -> None:
    obj = update(None, workload({"replicas": 1}, labels={"a": "b"}), "kubectl-create")
    assert obj["metadata"]["managedFields"] == [
        {
            "manager": "kubectl-create",
            "operation": "Update",
            "apiVersion": API,
            "time": NOW,
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {"f:labels": {".": {}, "f:a": {}}},
                "f:spec": {".": {}, "f:replicas": {}},
            },
        }
    ]


def test_server_owned_metadata_is_never_tracked_or_removed() -> None:
    obj = created({"replicas": 1})
    fields = owned(obj, "kubectl")
    assert fields == {".spec.replicas"}
    again = apply(obj, workload({}), "kubectl")
    for key in ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp"):
        assert again["metadata"][key] == obj["metadata"][key]
    assert "spec" not in again, "a map emptied by the removal goes too"
    # A configuration cannot overwrite what the server owns.
    hijack = workload({"replicas": 1}, uid="evil", resourceVersion="99", managedFields=[])
    kept = apply(obj, hijack, "kubectl")
    assert kept["metadata"]["uid"] == "u-1" and kept["metadata"]["resourceVersion"] == "1"
    assert owned(kept, "kubectl") == {".spec.replicas"}


# --------------------------------------------------------------------------------------------
# Conflicts.


def test_conflict_with_an_updater_has_kubernetes_message() -> None:
    obj = update(None, workload({"replicas": 1}), "kubectl-client-side-apply")
    with pytest.raises(ApplyConflict) as caught:
        apply(obj, workload({"replicas": 3}), "kubectl")
    assert str(caught.value) == (
        'Apply failed with 1 conflict: conflict with "kubectl-client-side-apply" using '
        "hypermesh.io/v1: .spec.replicas"
    )
    assert caught.value.conflicts == [
        fieldmanager.Conflict("kubectl-client-side-apply", ".spec.replicas", "Update", API)
    ]


def test_several_conflicts_are_grouped_by_manager() -> None:
    obj = created({"replicas": 1, "containers": [{"name": "web", "image": "a"}]}, manager="alice")
    obj = update(obj, workload({"replicas": 1, "paused": True,
                                "containers": [{"name": "web", "image": "a"}]}), "editor")
    with pytest.raises(ApplyConflict) as caught:
        apply(obj, workload({"replicas": 2, "paused": False,
                             "containers": [{"name": "web", "image": "b"}]}), "bob")
    assert caught.value.message == (
        "Apply failed with 3 conflicts: "
        'conflicts with "alice":\n'
        "- .spec.containers[name=\"web\"].image\n"
        "- .spec.replicas\n"
        f'conflicts with "editor" using {API}:\n'
        "- .spec.paused"
    )


def test_applying_the_same_value_shares_ownership_without_conflict() -> None:
    obj = created({"replicas": 3})
    obj = apply(obj, workload({"replicas": 3}), "helm")
    assert ".spec.replicas" in owned(obj, "kubectl")
    assert ".spec.replicas" in owned(obj, "helm")
    # When one sharer drops the field it stays, because the other still owns it.
    obj = apply(obj, workload({}), "kubectl")
    assert obj["spec"]["replicas"] == 3
    assert owned(obj, "kubectl") == set()
    # Its Apply entry stays, empty: the object is still one it applies.
    assert [e["fieldsV1"] for e in obj["metadata"]["managedFields"] if e["manager"] == "kubectl"] == [{}]
    # When the last owner drops it, it goes.
    obj = apply(obj, workload({}), "helm")
    assert "spec" not in obj


def test_force_moves_ownership_to_the_applier() -> None:
    obj = created({"replicas": 1, "paused": False})
    with pytest.raises(ApplyConflict):
        apply(obj, workload({"replicas": 5}), "hpa")
    obj = apply(obj, workload({"replicas": 5}), "hpa", force=True)
    assert obj["spec"]["replicas"] == 5
    assert owned(obj, "hpa") == {".spec.replicas"}
    assert owned(obj, "kubectl") == {".spec.paused"}
    # The old owner no longer owns the field, so its next apply without it removes nothing...
    obj = apply(obj, workload({"paused": False}), "kubectl")
    assert obj["spec"]["replicas"] == 5
    # ...and its apply with a different value now conflicts with the new owner.
    with pytest.raises(ApplyConflict, match='conflict with "hpa": .spec.replicas'):
        apply(obj, workload({"replicas": 1, "paused": False}), "kubectl")


def test_update_steals_ownership_so_the_next_apply_conflicts() -> None:
    obj = created({"replicas": 1, "paused": False})
    edited = copy.deepcopy(obj)
    edited["spec"]["replicas"] = 7
    obj = update(obj, edited, "kubectl-edit", now=LATER)
    assert owned(obj, "kubectl") == {".spec.paused"}
    assert owned(obj, "kubectl-edit", "Update") == {".spec.replicas"}
    assert entry(obj, "kubectl-edit", "Update")["time"] == LATER
    with pytest.raises(ApplyConflict) as caught:
        apply(obj, workload({"replicas": 1, "paused": False}), "kubectl")
    assert caught.value.conflicts[0].manager == "kubectl-edit"
    assert caught.value.conflicts[0].field == ".spec.replicas"


# --------------------------------------------------------------------------------------------
# Removal of dropped fields.


def test_dropping_a_field_removes_it() -> None:
    obj = created({"replicas": 2, "paused": True, "nodeSelector": {"disk": "ssd", "zone": "a"}})
    obj = apply(obj, workload({"replicas": 2, "nodeSelector": {"zone": "a"}}), "kubectl")
    assert obj["spec"] == {"replicas": 2, "nodeSelector": {"zone": "a"}}
    assert owned(obj, "kubectl") == {".spec.replicas", ".spec.nodeSelector.zone"}
    obj = apply(obj, workload({"replicas": 2}), "kubectl")
    assert obj["spec"] == {"replicas": 2}, "a map emptied by the removal goes too"


def test_fields_set_by_others_are_never_removed() -> None:
    obj = created({"replicas": 2})
    edited = copy.deepcopy(obj)
    edited["spec"]["paused"] = True
    edited["metadata"]["annotations"] = {"note": "hand-made"}
    obj = update(obj, edited, "kubectl-edit")
    obj = apply(obj, workload({}), "kubectl")
    assert obj["spec"] == {"paused": True}
    assert obj["metadata"]["annotations"] == {"note": "hand-made"}


def test_granular_labels_merge_per_key() -> None:
    obj = apply(None, workload({}, labels={"app": "web"}), "alice")
    obj = apply(obj, workload({}, labels={"tier": "front"}), "bob")
    assert obj["metadata"]["labels"] == {"app": "web", "tier": "front"}
    obj = apply(obj, workload({}), "alice")
    assert obj["metadata"]["labels"] == {"tier": "front"}
    obj = apply(obj, workload({}), "bob")
    assert "labels" not in obj["metadata"]


def test_null_in_configuration_removes_the_field() -> None:
    obj = created({"replicas": 2, "paused": True})
    obj = apply(obj, workload({"replicas": 2, "paused": None}), "kubectl")
    assert obj["spec"] == {"replicas": 2}


# --------------------------------------------------------------------------------------------
# Lists.


def test_associative_list_merges_by_key_and_removes_dropped_items() -> None:
    obj = created({"containers": [{"name": "web", "image": "nginx:1"}]})
    obj = apply(obj, workload({"containers": [{"name": "sidecar", "image": "envoy"}]}), "mesh")
    assert [c["name"] for c in obj["spec"]["containers"]] == ["web", "sidecar"]
    assert owned(obj, "mesh") == {
        '.spec.containers[name="sidecar"]',
        '.spec.containers[name="sidecar"].name',
        '.spec.containers[name="sidecar"].image',
    }
    # Changing a field of one's own item merges into the existing item, in place.
    obj = apply(obj, workload({"containers": [{"name": "web", "image": "nginx:2", "args": ["-v"]}]}),
                "kubectl")
    assert obj["spec"]["containers"] == [
        {"name": "web", "image": "nginx:2", "args": ["-v"]},
        {"name": "sidecar", "image": "envoy"},
    ]
    # Dropping the item removes exactly it.
    obj = apply(obj, workload({"containers": []}), "kubectl")
    assert obj["spec"]["containers"] == [{"name": "sidecar", "image": "envoy"}]
    obj = apply(obj, workload({}), "mesh")
    assert "containers" not in obj["spec"] or obj["spec"]["containers"] == []


def test_new_items_go_next_to_their_configured_neighbours() -> None:
    obj = created({"containers": [{"name": "a"}, {"name": "c"}]})
    obj = apply(obj, workload({"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}), "kubectl")
    assert [c["name"] for c in obj["spec"]["containers"]] == ["a", "b", "c"]
    obj = apply(obj, workload({"containers": [{"name": "z"}, {"name": "a"}, {"name": "b"}, {"name": "c"}]}),
                "kubectl")
    assert [c["name"] for c in obj["spec"]["containers"]] == ["z", "a", "b", "c"]


def test_dropped_item_survives_while_another_manager_owns_a_field_inside() -> None:
    obj = created({"containers": [{"name": "web", "image": "nginx:1", "args": ["a"]}]})
    edited = copy.deepcopy(obj)
    edited["spec"]["containers"][0]["image"] = "nginx:9"
    obj = update(obj, edited, "ops")
    obj = apply(obj, workload({"containers": []}), "kubectl")
    assert obj["spec"]["containers"] == [{"name": "web", "image": "nginx:9"}]


def test_atomic_list_is_replaced_whole() -> None:
    obj = created({"containers": [{"name": "web", "args": ["a", "b"]}]})
    obj = apply(obj, workload({"containers": [{"name": "web", "args": ["c"]}]}), "kubectl")
    assert obj["spec"]["containers"][0]["args"] == ["c"]
    assert '.spec.containers[name="web"].args' in owned(obj, "kubectl")
    # Another manager changing an atomic list conflicts on the list as a whole.
    with pytest.raises(ApplyConflict, match=r'\.spec\.containers\[name="web"\]\.args$'):
        apply(obj, workload({"containers": [{"name": "web", "args": ["d"]}]}), "other")


def test_lists_without_schema_are_atomic() -> None:
    obj = apply(None, workload({"containers": [{"name": "a"}]}), "alice", schema=None)
    obj = apply(obj, workload({"containers": [{"name": "b"}]}), "alice", schema=None)
    assert obj["spec"]["containers"] == [{"name": "b"}]
    assert owned(obj, "alice") == {".spec.containers"}


def test_set_lists_and_finalizers_merge_by_value() -> None:
    obj = created({"tags": ["a", "b"]})
    obj = apply(obj, workload({"tags": ["c"]}, finalizers=["example.com/x"]), "bob")
    assert obj["spec"]["tags"] == ["a", "b", "c"]
    assert '.spec.tags[="c"]' in owned(obj, "bob")
    edited = copy.deepcopy(obj)
    edited["metadata"]["finalizers"].append("kopf.zalando.org/KopfFinalizerMarker")
    obj = update(obj, edited, "kopf")
    assert owned(obj, "kopf", "Update") == {'.metadata.finalizers[="kopf.zalando.org/KopfFinalizerMarker"]'}
    obj = apply(obj, workload({}), "bob")
    assert obj["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]
    assert obj["spec"]["tags"] == ["a", "b"]


def test_atomic_map_is_owned_whole() -> None:
    obj = created({"selector": {"app": "web", "tier": "x"}})
    obj = apply(obj, workload({"selector": {"app": "web"}}), "kubectl")
    assert obj["spec"]["selector"] == {"app": "web"}
    assert owned(obj, "kubectl") == {".spec.selector"}


def test_owner_references_are_keyed_by_uid() -> None:
    ref = {"apiVersion": API, "kind": "Set", "name": "s", "uid": "u-9"}
    obj = apply(None, workload({}, ownerReferences=[ref]), "ctrl")
    assert '.metadata.ownerReferences[uid="u-9"]' in owned(obj, "ctrl")


def test_invalid_associative_list_items_are_rejected() -> None:
    with pytest.raises(FieldManagerError, match=r'\.spec\.containers\[0\]: .*"name"'):
        apply(None, workload({"containers": [{"image": "x"}]}), "kubectl")
    with pytest.raises(FieldManagerError, match="duplicate entries"):
        apply(None, workload({"containers": [{"name": "a"}, {"name": "a"}]}), "kubectl")


# --------------------------------------------------------------------------------------------
# Update bookkeeping and timestamps.


def test_update_removes_deleted_fields_from_every_manager() -> None:
    obj = created({"replicas": 1, "paused": True})
    edited = copy.deepcopy(obj)
    del edited["spec"]["paused"]
    obj = update(obj, edited, "kubectl-edit")
    assert owned(obj, "kubectl") == {".spec.replicas"}
    assert all(e["manager"] != "kubectl-edit" for e in obj["metadata"]["managedFields"])


def test_status_subresource_entry_is_separate() -> None:
    obj = created({"replicas": 1})
    with_status = copy.deepcopy(obj)
    with_status["status"] = {"ready": 1}
    obj = update(obj, with_status, "controller", subresource="status")
    status_entry = entry(obj, "controller", "Update")
    assert status_entry["subresource"] == "status"
    assert status_entry["fieldsV1"] == {"f:status": {".": {}, "f:ready": {}}}


def test_no_op_apply_returns_the_same_object() -> None:
    obj = created({"replicas": 1})
    again = apply(obj, workload({"replicas": 1}), "kubectl", now=LATER)
    assert again == obj
    changed = apply(obj, workload({"replicas": 2}), "kubectl", now=LATER)
    assert entry(changed, "kubectl")["time"] == LATER


def test_user_can_reset_managed_fields() -> None:
    obj = created({"replicas": 1})
    for reset in ([], [{}]):
        cleared = copy.deepcopy(obj)
        cleared["metadata"]["managedFields"] = reset
        result = update(obj, cleared, "kubectl-patch")
        assert "managedFields" not in result["metadata"]
    # Omitting the key keeps the recorded owners.
    omitted = copy.deepcopy(obj)
    del omitted["metadata"]["managedFields"]
    assert update(obj, omitted, "kubectl-replace")["metadata"]["managedFields"] == obj["metadata"]["managedFields"]
    # A reset combined with a change hands the change to the writer.
    reset_and_edit = copy.deepcopy(obj)
    reset_and_edit["metadata"]["managedFields"] = []
    reset_and_edit["spec"]["paused"] = True
    result = update(obj, reset_and_edit, "kubectl-patch")
    assert [e["manager"] for e in result["metadata"]["managedFields"]] == ["kubectl-patch"]


def test_user_written_managed_fields_are_validated_and_honoured() -> None:
    obj = created({"replicas": 1})
    custom = copy.deepcopy(obj)
    custom["metadata"]["managedFields"] = [
        {"manager": "someone", "operation": "Update", "apiVersion": API, "fieldsType": "FieldsV1",
         "fieldsV1": {"f:spec": {"f:replicas": {}}}}
    ]
    result = update(obj, custom, "kubectl-patch")
    assert owned(result, "someone", "Update") == {".spec.replicas"}
    custom["metadata"]["managedFields"][0]["operation"] = "Patch"
    with pytest.raises(FieldManagerError, match=r"managedFields\[0\]\.operation: Unsupported value"):
        update(obj, custom, "kubectl-patch")
    custom["metadata"]["managedFields"][0].update(operation="Update", fieldsV1={"x:y": {}})
    with pytest.raises(FieldManagerError, match="is not a FieldsV1 key"):
        update(obj, custom, "kubectl-patch")


def test_inputs_are_not_mutated() -> None:
    live = created({"replicas": 1, "containers": [{"name": "web", "image": "a"}]})
    config = workload({"containers": [{"name": "web", "image": "b"}]})
    live_before, config_before = copy.deepcopy(live), copy.deepcopy(config)
    result = apply(live, config, "kubectl")
    result["spec"]["containers"][0]["image"] = "scribbled"
    result["metadata"]["name"] = "scribbled"
    assert live == live_before and config == config_before
    new = copy.deepcopy(live)
    new["spec"]["replicas"] = 4
    new_before = copy.deepcopy(new)
    update(live, new, "x")
    assert live == live_before and new == new_before


def test_first_apply_to_untracked_object_conflicts_with_existing_values() -> None:
    legacy = workload({"replicas": 1}, uid="u", resourceVersion="3")
    with pytest.raises(ApplyConflict, match='"before-first-apply"'):
        apply(legacy, workload({"replicas": 2}), "kubectl")
    obj = apply(legacy, workload({"replicas": 1}), "kubectl")
    assert owned(obj, "kubectl") == {".spec.replicas"}


def test_update_entries_are_capped() -> None:
    obj = created({"replicas": 0})
    for i in range(15):
        new = copy.deepcopy(obj)
        new["spec"][f"f{i}"] = i
        obj = update(obj, new, f"writer-{i:02d}", now=f"2026-11-27T03:00:{i:02d}Z")
    updates = [e for e in obj["metadata"]["managedFields"] if e["operation"] == "Update"]
    assert len(updates) == fieldmanager.MAX_UPDATE_MANAGERS
    assert owned(obj, "ancient-changes", "Update") == {f".spec.f{i}" for i in range(6)}


# --------------------------------------------------------------------------------------------
# Properties.

_leaf = st.integers(-5, 5) | st.sampled_from(["x", "y", True, False]) | st.lists(st.integers(0, 3), max_size=2)
_config = st.recursive(
    _leaf,
    lambda children: st.dictionaries(st.sampled_from("abcd"), children, min_size=1, max_size=3),
    max_leaves=8,
)
_configs = st.dictionaries(st.sampled_from("pqrs"), _config, max_size=3)


@settings(max_examples=80, deadline=None)
@given(st.lists(_configs, min_size=1, max_size=4))
def test_a_single_applier_converges_on_its_configuration(configs: list[dict[str, Any]]) -> None:
    obj: dict[str, Any] | None = None
    for config in configs:
        obj = fieldmanager.apply(obj, {"metadata": {"name": "n"}, **config}, manager="m", force=False,
                                 schema=None, now=NOW, api_version=API)
        body = {k: v for k, v in obj.items() if k != "metadata"}
        assert body == config
    assert obj is not None
    # Applying the last configuration again changes nothing at all.
    again = fieldmanager.apply(obj, {"metadata": {"name": "n"}, **configs[-1]}, manager="m",
                               force=False, schema=None, now=LATER, api_version=API)
    assert again == obj


@settings(max_examples=80, deadline=None)
@given(_configs, _configs)
def test_two_appliers_with_force_never_lose_the_other_ones_disjoint_fields(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    obj = fieldmanager.apply(None, {"metadata": {"name": "n"}, **first}, manager="a", force=False,
                             schema=None, now=NOW, api_version=API)
    obj = fieldmanager.apply(obj, {"metadata": {"name": "n"}, **second}, manager="b", force=True,
                             schema=None, now=NOW, api_version=API)
    # Every field b applied has b's value, and b owns exactly what it applied.
    for key, value in second.items():
        if not isinstance(value, dict):
            assert obj[key] == value
    assert owned(obj, "b") == fieldmanager.owned_fields(
        fieldmanager.apply(None, {"metadata": {}, **second}, manager="b", force=False, schema=None,
                           now=NOW, api_version=API), "b")
