"""Merge patch and JSON patch: RFC examples, error messages, and property tests of the laws."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypermesh.api import patching
from hypermesh.api.patching import PatchError, PatchTestFailed

# --------------------------------------------------------------------------------------------
# Strategies.

_keys = st.text(alphabet="ab~/-0c", min_size=0, max_size=4)
_scalars_no_null = (
    st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(max_size=5)
)


def _json(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(_keys, children, max_size=4),
        max_leaves=12,
    )


json_values = _json(st.none() | _scalars_no_null)
json_no_null = _json(_scalars_no_null)
json_objects = st.dictionaries(_keys, json_values, max_size=5)

FAST = settings(max_examples=100, deadline=None)


# --------------------------------------------------------------------------------------------
# JSON helpers.


def test_json_equal_distinguishes_booleans_from_numbers() -> None:
    assert patching.json_equal(1, 1.0)
    assert not patching.json_equal(True, 1)
    assert not patching.json_equal([0], [False])
    assert not patching.json_equal({"a": 1}, {"a": True})
    assert patching.json_equal({"a": [1, {"b": None}]}, {"a": [1, {"b": None}]})
    assert not patching.json_equal({"a": None}, {})


def test_clone_is_deep() -> None:
    doc = {"a": [{"b": 1}]}
    copied = patching.clone_json(doc)
    copied["a"][0]["b"] = 2
    assert doc == {"a": [{"b": 1}]}


# --------------------------------------------------------------------------------------------
# Merge patch.


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        # The examples of RFC 7386, appendix A.
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_rfc_examples(target: Any, patch: Any, result: Any) -> None:
    assert patching.merge_patch(target, patch) == result


def test_merge_patch_typical_kopf_annotation_patch() -> None:
    live = {"metadata": {"name": "web", "annotations": {"keep": "1", "drop": "2"}}, "spec": {"x": 1}}
    patch = {"metadata": {"annotations": {"drop": None, "new": "3"}}}
    assert patching.merge_patch(live, patch) == {
        "metadata": {"name": "web", "annotations": {"keep": "1", "new": "3"}},
        "spec": {"x": 1},
    }


@FAST
@given(json_values, json_values)
def test_merge_patch_never_mutates_and_never_aliases(target: Any, patch: Any) -> None:
    target_before, patch_before = copy.deepcopy(target), copy.deepcopy(patch)
    result = patching.merge_patch(target, patch)
    assert target == target_before and patch == patch_before
    # Editing the result must not reach into either input.
    _scribble(result)
    assert target == target_before and patch == patch_before


def _scribble(value: Any) -> None:
    if isinstance(value, dict):
        for child in value.values():
            _scribble(child)
        value["scribbled"] = True
    elif isinstance(value, list):
        for child in value:
            _scribble(child)
        value.append("scribbled")


@FAST
@given(json_values, json_values)
def test_merge_patch_is_idempotent(target: Any, patch: Any) -> None:
    once = patching.merge_patch(target, patch)
    assert patching.json_equal(patching.merge_patch(once, patch), once)


@FAST
@given(json_no_null, json_no_null)
def test_merge_diff_turns_source_into_target(source: Any, target: Any) -> None:
    diff = patching.merge_diff(source, target)
    assert patching.json_equal(patching.merge_patch(source, diff), target)


@FAST
@given(json_no_null)
def test_merge_diff_of_equal_objects_is_empty(value: Any) -> None:
    if isinstance(value, dict):
        assert patching.merge_diff(value, copy.deepcopy(value)) == {}


# --------------------------------------------------------------------------------------------
# JSON pointer.


def test_pointer_escapes() -> None:
    assert patching.parse_pointer("") == []
    assert patching.parse_pointer("/") == [""]
    assert patching.parse_pointer("/a~1b/m~0n/~01") == ["a/b", "m~n", "~1"]
    for bad in ("a", "/a~", "/a~2"):
        with pytest.raises(ValueError):
            patching.parse_pointer(bad)


@FAST
@given(st.lists(st.text(max_size=6), max_size=5))
def test_pointer_round_trip(tokens: list[str]) -> None:
    assert patching.parse_pointer(patching.format_pointer(tokens)) == tokens


# --------------------------------------------------------------------------------------------
# JSON patch: operations.


def test_add_to_objects_and_arrays() -> None:
    doc = {"foo": ["bar", "baz"]}
    assert patching.json_patch(doc, [{"op": "add", "path": "/foo/1", "value": "qux"}]) == {
        "foo": ["bar", "qux", "baz"]
    }
    assert patching.json_patch(doc, [{"op": "add", "path": "/foo/-", "value": "end"}]) == {
        "foo": ["bar", "baz", "end"]
    }
    assert patching.json_patch(doc, [{"op": "add", "path": "/foo/2", "value": "end"}]) == {
        "foo": ["bar", "baz", "end"]
    }
    assert patching.json_patch(doc, [{"op": "add", "path": "/new", "value": None}]) == {
        "foo": ["bar", "baz"],
        "new": None,
    }
    assert patching.json_patch(doc, [{"op": "add", "path": "", "value": [1]}]) == [1]


def test_escaped_keys() -> None:
    doc = {"metadata": {"annotations": {"kopf.zalando.org/last": "x", "a~b": "y"}}}
    ops = [
        {"op": "remove", "path": "/metadata/annotations/kopf.zalando.org~1last"},
        {"op": "replace", "path": "/metadata/annotations/a~0b", "value": "z"},
    ]
    assert patching.json_patch(doc, ops) == {"metadata": {"annotations": {"a~b": "z"}}}


def test_remove_replace_move_copy() -> None:
    doc = {"a": {"b": 1, "c": [1, 2, 3]}, "d": "e"}
    assert patching.json_patch(doc, [{"op": "remove", "path": "/a/c/0"}]) == {
        "a": {"b": 1, "c": [2, 3]},
        "d": "e",
    }
    assert patching.json_patch(doc, [{"op": "replace", "path": "/a/b", "value": {"x": 1}}]) == {
        "a": {"b": {"x": 1}, "c": [1, 2, 3]},
        "d": "e",
    }
    assert patching.json_patch(doc, [{"op": "move", "from": "/a/b", "path": "/d"}]) == {
        "a": {"c": [1, 2, 3]},
        "d": 1,
    }
    assert patching.json_patch(doc, [{"op": "move", "from": "/a/c/0", "path": "/a/c/-"}]) == {
        "a": {"b": 1, "c": [2, 3, 1]},
        "d": "e",
    }
    copied = patching.json_patch(doc, [{"op": "copy", "from": "/a", "path": "/z"}])
    assert copied["z"] == doc["a"]
    copied["z"]["c"].append(9)
    assert copied["a"]["c"] == [1, 2, 3], "copy must not alias the source"
    assert patching.json_patch(doc, [{"op": "move", "from": "/a", "path": "/a"}]) == doc
    assert patching.json_patch(doc, [{"op": "replace", "path": "", "value": 5}]) == 5


def test_kopf_finalizer_patch_with_resource_version_guard() -> None:
    obj = {"metadata": {"name": "web", "resourceVersion": "4"}}
    ops = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "4"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["kopf.zalando.org/KopfFinalizerMarker"]},
    ]
    assert patching.json_patch(obj, ops)["metadata"]["finalizers"] == [
        "kopf.zalando.org/KopfFinalizerMarker"
    ]
    stale = {"metadata": {"name": "web", "resourceVersion": "5"}}
    with pytest.raises(PatchTestFailed) as caught:
        patching.json_patch(stale, ops)
    assert caught.value.message == (
        'the test operation at /metadata/resourceVersion failed: value is "5", expected "4"'
    )


def test_test_operation_is_strict_json_equality() -> None:
    with pytest.raises(PatchTestFailed):
        patching.json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": True}])
    patching.json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": 1.0}])
    with pytest.raises(PatchTestFailed, match="path does not exist"):
        patching.json_patch({}, [{"op": "test", "path": "/a", "value": None}])
    assert issubclass(PatchTestFailed, PatchError)


# --------------------------------------------------------------------------------------------
# JSON patch: errors.


@pytest.mark.parametrize(
    ("doc", "ops", "message"),
    [
        ({"spec": {}}, [{"op": "test", "path": "/spec", "value": {}}, {"op": "add", "path": "/x", "value": 1},
          {"op": "remove", "path": "/spec/foo"}], "operation 2 (remove): path /spec/foo does not exist"),
        ({}, {"op": "add"}, "a JSON patch must be an array of operations, got object"),
        ({}, ["add"], "operation 0: must be an object, got string"),
        ({}, [{"path": "/a"}], 'operation 0: missing "op"'),
        ({}, [{"op": "merge", "path": "/a"}], 'operation 0: unknown op "merge" (allowed: add, remove'),
        ({}, [{"op": "add", "value": 1}], 'operation 0 (add): missing "path"'),
        ({}, [{"op": "add", "path": "/a"}], 'operation 0 (add): missing "value"'),
        ({}, [{"op": "replace", "path": "/a"}], 'operation 0 (replace): missing "value"'),
        ({}, [{"op": "test", "path": "/a"}], 'operation 0 (test): missing "value"'),
        ({}, [{"op": "move", "path": "/a"}], 'operation 0 (move): missing "from"'),
        ({}, [{"op": "copy", "path": "/a", "from": 3}], 'operation 0 (copy): "from" must be a string'),
        ({}, [{"op": "add", "path": "a", "value": 1}], 'operation 0 (add): "path" "a" is not a JSON pointer'),
        ({}, [{"op": "add", "path": "/a/b", "value": 1}], "operation 0 (add): path /a/b does not exist"),
        ({"a": 1}, [{"op": "add", "path": "/a/b", "value": 1}], "its parent is a number"),
        ({"a": [1]}, [{"op": "add", "path": "/a/3", "value": 1}], "index 3 is out of range (the array has 1 item)"),
        ({"a": [1]}, [{"op": "add", "path": "/a/01", "value": 1}], "'01' is not a valid array index"),
        ({"a": [1]}, [{"op": "remove", "path": "/a/1"}], "operation 0 (remove): path /a/1 does not exist"),
        ({"a": [1]}, [{"op": "remove", "path": "/a/-"}], "operation 0 (remove): path /a/- does not exist"),
        ({"a": 1}, [{"op": "replace", "path": "/b", "value": 1}], "operation 0 (replace): path /b does not exist"),
        ({"a": 1}, [{"op": "remove", "path": ""}], "cannot remove the whole document"),
        ({"a": {"b": 1}}, [{"op": "move", "from": "/a", "path": "/a/b/c"}], "cannot move /a into its own child /a/b/c"),
        ({"a": 1}, [{"op": "copy", "from": "/x", "path": "/y"}], "operation 0 (copy): path /x does not exist"),
    ],
)
def test_errors_name_the_operation_and_path(doc: Any, ops: Any, message: str) -> None:
    with pytest.raises(PatchError) as caught:
        patching.json_patch(doc, ops)
    assert not isinstance(caught.value, PatchTestFailed)
    assert message in caught.value.message


def test_failed_patch_leaves_input_unchanged() -> None:
    doc = {"metadata": {"finalizers": ["a"]}, "spec": {"x": [1]}}
    before = copy.deepcopy(doc)
    ops = [
        {"op": "add", "path": "/spec/x/-", "value": 2},
        {"op": "remove", "path": "/metadata/finalizers/0"},
        {"op": "test", "path": "/spec/x/1", "value": 3},
    ]
    with pytest.raises(PatchTestFailed):
        patching.json_patch(doc, ops)
    assert doc == before


# --------------------------------------------------------------------------------------------
# JSON patch: properties.


@FAST
@given(json_objects, st.text(max_size=6), json_values)
def test_add_then_remove_is_identity(doc: dict[str, Any], key: str, value: Any) -> None:
    if key in doc:
        return
    pointer = patching.format_pointer([key])
    ops = [{"op": "add", "path": pointer, "value": value}, {"op": "remove", "path": pointer}]
    assert patching.json_equal(patching.json_patch(doc, ops), doc)


@FAST
@given(st.lists(json_values, max_size=6), st.data())
def test_insert_then_remove_in_arrays_is_identity(items: list[Any], data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(items)))
    value = data.draw(json_values)
    ops = [{"op": "add", "path": f"/{index}", "value": value}, {"op": "remove", "path": f"/{index}"}]
    assert patching.json_equal(patching.json_patch(items, ops), items)


def _pointers(value: Any, prefix: list[str]) -> list[list[str]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _pointers(child, prefix + [key])
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _pointers(child, prefix + [str(index)])
    return found


@FAST
@given(json_values, st.data())
def test_test_succeeds_on_actual_value_and_fails_on_other(doc: Any, data: st.DataObject) -> None:
    tokens = data.draw(st.sampled_from(_pointers(doc, [])))
    pointer = patching.format_pointer(tokens)
    actual: Any = doc
    for token in tokens:
        actual = actual[int(token)] if isinstance(actual, list) else actual[token]
    assert patching.json_equal(patching.json_patch(doc, [{"op": "test", "path": pointer, "value": actual}]), doc)
    other = data.draw(json_values)
    if not patching.json_equal(other, actual):
        with pytest.raises(PatchTestFailed):
            patching.json_patch(doc, [{"op": "test", "path": pointer, "value": other}])


_ops = st.fixed_dictionaries(
    {"op": st.sampled_from([*patching.OPERATIONS, "bogus"])},
    optional={
        "path": st.sampled_from(["", "/", "/a", "/a/0", "/a/-", "/b/c", "/a~1", "/a~", "x"]) | st.integers(),
        "from": st.sampled_from(["", "/a", "/a/0", "/b", "/zz"]),
        "value": json_values,
    },
)


@FAST
@given(json_values, st.lists(_ops, max_size=5) | json_values)
def test_random_patches_raise_only_patch_errors(doc: Any, ops: Any) -> None:
    before = copy.deepcopy(doc)
    try:
        patching.json_patch(doc, ops)
    except PatchError:
        pass
    assert doc == before
