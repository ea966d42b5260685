"""Label and field selectors: grammar, canonical form, matching, and errors that explain."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypermesh.api import selectors
from hypermesh.api.selectors import Requirement, SelectorError

FAST = settings(max_examples=150, deadline=None)

# --------------------------------------------------------------------------------------------
# Label selectors: parsing and canonical form.


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("", ""),
        ("   ", ""),
        ("tier=x", "tier=x"),
        ("tier==x", "tier=x"),
        ("tier!=x", "tier!=x"),
        ("tier=", "tier="),
        ("tier", "tier"),
        ("!tier", "!tier"),
        (" ! tier ", "!tier"),
        ("env in (prod, dev)", "env in (dev,prod)"),
        ("env in(prod,dev,prod)", "env in (dev,prod)"),
        ("env notin ( a )", "env notin (a)"),
        ("env in (a,)", "env in (,a)"),
        ("env in ()", "env in ()"),
        ("b=1, a in (x,y) ,!c,d", "a in (x,y),b=1,!c,d"),
        ("example.com/app=web,app.kubernetes.io/name=x", "app.kubernetes.io/name=x,example.com/app=web"),
        ("k=a-b_c.d", "k=a-b_c.d"),
    ],
)
def test_parse_and_canonical_form(text: str, canonical: str) -> None:
    selector = selectors.parse_label_selector(text)
    assert str(selector) == canonical
    assert selectors.parse_label_selector(canonical) == selector


def test_requirements_are_structured() -> None:
    selector = selectors.parse_label_selector("a in (y,x), !b, c")
    assert selector.requirements == (
        Requirement("a", "in", ("x", "y")),
        Requirement("b", "!"),
        Requirement("c", "exists"),
    )


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a=b,", "expected a label key, found the end"),
        (",a=b", "expected a label key, found ','"),
        ("a b", "expected one of '=', '==', '!=', 'in', 'notin', ',' after a label key, found 'b'"),
        ("a in b", "expected '(' to open the set of values, found 'b'"),
        ("a in (b", "expected ',' or ')' in the set of values, found the end"),
        ("a in (b c)", "found 'c'"),
        ("a=(b)", "expected a label value after '='"),
        ("a=b c", "expected ',' between requirements or the end, found 'c'"),
        ("a=b=c", "found '='"),
        ("-a=b", "invalid label key '-a'"),
        ("Example.com/a=b", "the prefix must be a DNS subdomain"),
        ("/a=b", "the prefix before '/' must not be empty"),
        ("a/=b", "the name part must not be empty"),
        ("a=" + "v" * 64, "a label value must be empty or at most 63 characters"),
        ("a" * 64, "the name part must be at most 63 characters"),
        ("a=b!", "found '!'"),
        ("a in (x,-y)", "invalid label value '-y'"),
        ("!", "expected a label key, found the end"),
    ],
)
def test_errors_say_what_is_wrong_and_what_is_allowed(text: str, fragment: str) -> None:
    with pytest.raises(SelectorError) as caught:
        selectors.parse_label_selector(text)
    assert fragment in caught.value.message


def test_error_reports_position() -> None:
    with pytest.raises(SelectorError, match="at position 4"):
        selectors.parse_label_selector("a=b c")


# --------------------------------------------------------------------------------------------
# Label selectors: matching.


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("", None, True),
        ("", {"a": "b"}, True),
        ("a=b", {"a": "b"}, True),
        ("a=b", {"a": "c"}, False),
        ("a=b", {}, False),
        ("a=", {"a": ""}, True),
        ("a=", {}, False),
        ("a!=b", {}, True),
        ("a!=b", {"a": "b"}, False),
        ("a!=b", {"a": "c"}, True),
        ("a in (x,y)", {"a": "y"}, True),
        ("a in (x,y)", {}, False),
        ("a notin (x,y)", {}, True),
        ("a notin (x,y)", {"a": "x"}, False),
        ("a", {"a": ""}, True),
        ("a", None, False),
        ("!a", {"b": "c"}, True),
        ("!a", {"a": "c"}, False),
        ("a=b,c", {"a": "b"}, False),
        ("a=b,c", {"a": "b", "c": "d"}, True),
    ],
)
def test_matching(text: str, labels: dict[str, str] | None, expected: bool) -> None:
    assert selectors.parse_label_selector(text).matches(labels) is expected


# --------------------------------------------------------------------------------------------
# Label selectors: properties.

_label_keys = st.sampled_from(["a", "b", "app", "example.com/tier", "x.y-z/k_1"])
_label_values = st.sampled_from(["", "v", "w", "prod", "a.b-c_d"])


@st.composite
def _requirement_texts(draw: st.DrawFn) -> tuple[str, tuple[str, str, frozenset[str]]]:
    """A requirement as messy text, plus (key, operator, values) for the reference evaluator."""
    key = draw(_label_keys)
    operator = draw(st.sampled_from(["=", "==", "!=", "in", "notin", "exists", "!"]))
    space = draw(st.sampled_from(["", " ", "  ", "\t"]))
    if operator in ("=", "==", "!="):
        value = draw(_label_values)
        text = f"{key}{space}{operator}{space}{value}"
        return text, (key, "!=" if operator == "!=" else "=", frozenset([value]))
    if operator in ("in", "notin"):
        values = draw(st.lists(_label_values, min_size=1, max_size=3))
        text = f"{key} {operator}{space}({space}{(space + ',' + space).join(values)}{space})"
        return text, (key, operator, frozenset(values))
    if operator == "exists":
        return f"{space}{key}{space}", (key, "exists", frozenset())
    return f"!{space}{key}", (key, "!", frozenset())


def _reference(requirement: tuple[str, str, frozenset[str]], labels: dict[str, str]) -> bool:
    key, operator, values = requirement
    if operator == "=":
        return labels.get(key) in values
    if operator == "in":
        return key in labels and labels[key] in values
    if operator in ("!=", "notin"):
        return labels.get(key) not in values
    if operator == "exists":
        return key in labels
    return key not in labels


_label_sets = st.dictionaries(_label_keys, _label_values, max_size=4)


@FAST
@given(st.lists(_requirement_texts(), max_size=4), st.lists(_label_sets, min_size=1, max_size=4))
def test_matching_agrees_with_reference_and_canonical_form_round_trips(
    requirements: list[tuple[str, tuple[str, str, frozenset[str]]]],
    label_sets: list[dict[str, str]],
) -> None:
    text = " , ".join(text for text, _ in requirements)
    selector = selectors.parse_label_selector(text)
    reparsed = selectors.parse_label_selector(str(selector))
    assert reparsed == selector
    assert str(reparsed) == str(selector)
    for labels in label_sets:
        expected = all(_reference(requirement, labels) for _, requirement in requirements)
        assert selector.matches(labels) is expected
        assert reparsed.matches(labels) is expected


@FAST
@given(st.text(alphabet="ab/.-_=!(), \tinotx~é", max_size=25) | st.text(max_size=15))
def test_parse_raises_only_selector_errors(text: str) -> None:
    try:
        selector = selectors.parse_label_selector(text)
    except SelectorError:
        return
    assert selectors.parse_label_selector(str(selector)) == selector


# --------------------------------------------------------------------------------------------
# Selectors from a Workload's spec.selector.


def test_selector_from_spec() -> None:
    selector = selectors.selector_from_spec(
        {
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "back"]},
                {"key": "canary", "operator": "DoesNotExist"},
                {"key": "zone", "operator": "Exists", "values": []},
                {"key": "env", "operator": "NotIn", "values": ["dev"]},
            ],
        }
    )
    assert str(selector) == "app=web,!canary,env notin (dev),tier in (back,front),zone"
    assert selector.matches({"app": "web", "tier": "front", "zone": "a"})
    assert not selector.matches({"app": "web", "tier": "front", "zone": "a", "canary": "1"})
    assert selectors.selector_from_spec({}).matches({"any": "thing"})


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (None, "selector: must be an object"),
        ({"matchLabel": {}}, "unknown field 'matchLabel' (allowed: matchLabels, matchExpressions)"),
        ({"matchLabels": ["a"]}, "selector.matchLabels: must be a map"),
        ({"matchLabels": {"a": 1}}, "selector.matchLabels['a']: the value must be a string"),
        ({"matchLabels": {"a b": "c"}}, "selector.matchLabels['a b']: invalid label key"),
        ({"matchExpressions": {}}, "selector.matchExpressions: must be a list"),
        ({"matchExpressions": [{"operator": "Exists"}]}, "selector.matchExpressions[0].key: required"),
        ({"matchExpressions": [{"key": "a", "operator": "in", "values": ["b"]}]},
         "selector.matchExpressions[0].operator: unsupported value 'in' (allowed: In, NotIn, Exists, DoesNotExist)"),
        ({"matchExpressions": [{"key": "a", "operator": "In"}]},
         "selector.matchExpressions[0].values: must be non-empty when operator is 'In'"),
        ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["b"]}]},
         "selector.matchExpressions[0].values: must be empty when operator is 'Exists'"),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": [1]}]},
         "selector.matchExpressions[0].values: must be a list of strings"),
    ],
)
def test_selector_from_spec_errors_name_the_field(spec: Any, fragment: str) -> None:
    with pytest.raises(SelectorError) as caught:
        selectors.selector_from_spec(spec)
    assert fragment in caught.value.message


# --------------------------------------------------------------------------------------------
# Field selectors.

ALLOWED = ("metadata.name", "metadata.namespace", "involvedObject.kind", "involvedObject.name",
           "spec.nodeName", "status.phase", "spec.unschedulable")


def test_field_selector_parse_match_and_exact() -> None:
    selector = selectors.parse_field_selector(
        "involvedObject.name=web,involvedObject.kind==Workload, status.phase!=Failed",
        allowed=ALLOWED,
    )
    event = {"involvedObject": {"name": "web", "kind": "Workload"}, "status": {"phase": "Running"}}
    assert selector.matches(event)
    assert not selector.matches({**event, "status": {"phase": "Failed"}})
    assert selector.exact("involvedObject.name") == "web"
    assert selector.exact("status.phase") is None
    assert selector.exact("metadata.name") is None
    assert str(selector) == "involvedObject.name=web,involvedObject.kind=Workload,status.phase!=Failed"


def test_field_selector_missing_fields_read_as_empty() -> None:
    unscheduled = selectors.parse_field_selector("spec.nodeName=", allowed=ALLOWED)
    assert unscheduled.matches({"spec": {}})
    assert unscheduled.matches({})
    assert not unscheduled.matches({"spec": {"nodeName": "n1"}})
    assert selectors.parse_field_selector("spec.nodeName!=", allowed=ALLOWED).matches(
        {"spec": {"nodeName": "n1"}}
    )
    assert selectors.parse_field_selector("spec.unschedulable=true", allowed=ALLOWED).matches(
        {"spec": {"unschedulable": True}}
    )


def test_field_selector_empty_matches_everything() -> None:
    selector = selectors.parse_field_selector("", allowed=ALLOWED)
    assert selector.empty and selector.matches({}) and selector.exact("metadata.name") is None


def test_field_selector_escapes() -> None:
    selector = selectors.parse_field_selector(r"metadata.name=a\,b\=c\\d", allowed=ALLOWED)
    assert selector.exact("metadata.name") == "a,b=c\\d"
    assert selectors.parse_field_selector(str(selector), allowed=ALLOWED) == selector


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("spec.foo=bar", "field label not supported: spec.foo (supported field selectors: involvedObject.kind,"),
        ("metadata.name", "has no operator (expected field=value, field==value or field!=value)"),
        ("=web", "has no field"),
        ("metadata.name=a=b", "unescaped '=' in value"),
        (r"metadata.name=a\x", "invalid escape sequence"),
        ("metadata.name=a\\", "ends with"),
        ("metadata.name=a,", "term '' has no operator"),
    ],
)
def test_field_selector_errors(text: str, fragment: str) -> None:
    with pytest.raises(SelectorError) as caught:
        selectors.parse_field_selector(text, allowed=ALLOWED)
    assert fragment in caught.value.message


@FAST
@given(st.text(alphabet="metadna.ms=!,\\ x", max_size=30))
def test_field_selector_parse_raises_only_selector_errors(text: str) -> None:
    try:
        selector = selectors.parse_field_selector(text, allowed=ALLOWED)
    except SelectorError:
        return
    assert selectors.parse_field_selector(str(selector), allowed=ALLOWED) == selector


@FAST
@given(st.lists(st.tuples(st.sampled_from(ALLOWED), st.sampled_from(["=", "==", "!="]),
                          st.text(alphabet="ab,=!\\ -", max_size=5)), max_size=3))
def test_field_selector_values_round_trip_through_escaping(
    terms: list[tuple[str, str, str]]
) -> None:
    built = selectors.FieldSelector(
        tuple(selectors.FieldRequirement(f, "!=" if op == "!=" else "=", v.strip()) for f, op, v in terms)
    )
    assert selectors.parse_field_selector(str(built), allowed=ALLOWED) == built
