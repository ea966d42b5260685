"""Label requirements in a hashable, validated form, and matching them against one label set.

Instances carry their constraints as free-form Kubernetes shapes (`nodeSelector`, node affinity
`matchExpressions`, instance affinity `labelSelector`). The scheduler caches what a constraint
means for the whole node matrix, keyed by the constraint itself, so each shape is turned once into
tuples of `Requirement`: hashable, validated (bad operators fail here with the field path), and
cheap to compare. Matching a requirement against *one* label dict lives here too (used for the
labels of bound instances); matching against *all* nodes at once is the node matrix's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "Requirement",
    "SpecError",
    "label_selector",
    "matches",
    "node_selector_requirements",
]

Operator = Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
_OPERATORS: frozenset[str] = frozenset({"In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"})
_LABEL_OPERATORS: frozenset[str] = frozenset({"In", "NotIn", "Exists", "DoesNotExist"})


class SpecError(ValueError):
    """An Instance field the scheduler cannot interpret; says where and what is allowed."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field}: invalid value {value!r}: {allowed}")


@dataclass(frozen=True, slots=True)
class Requirement:
    """One `key operator values` test; `values` sorted so equal requirements hash equal."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()


def node_selector_requirements(expressions: object, *, field: str) -> tuple[Requirement, ...]:
    """`matchExpressions` of a node selector term (all six operators) as requirements."""
    return _requirements(expressions, field=field, operators=_OPERATORS)


def label_selector(selector: object, *, field: str) -> tuple[Requirement, ...]:
    """A metav1.LabelSelector (`matchLabels` + `matchExpressions`) as ANDed requirements.

    An empty selector yields no requirements and so matches everything, as in Kubernetes.
    """
    if selector is None:
        return ()
    if not isinstance(selector, Mapping):
        raise SpecError(field, selector, "a label selector object")
    found: list[Requirement] = []
    labels = selector.get("matchLabels") or {}
    if not isinstance(labels, Mapping):
        raise SpecError(f"{field}.matchLabels", labels, "a map of label to value")
    for key, value in sorted(labels.items()):
        found.append(Requirement(str(key), "In", (str(value),)))
    found += _requirements(
        selector.get("matchExpressions"),
        field=f"{field}.matchExpressions",
        operators=_LABEL_OPERATORS,
    )
    return tuple(found)


def matches(requirements: tuple[Requirement, ...], labels: Mapping[str, str]) -> bool:
    """Whether one label set satisfies every requirement."""
    for req in requirements:
        value = labels.get(req.key)
        op = req.operator
        if op == "In":
            ok = value is not None and value in req.values
        elif op == "NotIn":
            ok = value is None or value not in req.values
        elif op == "Exists":
            ok = value is not None
        elif op == "DoesNotExist":
            ok = value is None
        else:
            number = _integer(value)
            bound = int(req.values[0])
            ok = number is not None and (number > bound if op == "Gt" else number < bound)
        if not ok:
            return False
    return True


def _integer(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _requirements(
    expressions: object, *, field: str, operators: frozenset[str]
) -> tuple[Requirement, ...]:
    if expressions is None:
        return ()
    if not isinstance(expressions, list):
        raise SpecError(field, expressions, "a list of {key, operator, values}")
    found = []
    for i, expression in enumerate(expressions):
        where = f"{field}[{i}]"
        if not isinstance(expression, Mapping):
            raise SpecError(where, expression, "an object {key, operator, values}")
        found.append(_requirement(expression, where, operators))
    return tuple(found)


def _requirement(expression: Mapping[str, Any], where: str, operators: frozenset[str]) -> Requirement:
    key = expression.get("key")
    if not isinstance(key, str) or not key:
        raise SpecError(f"{where}.key", key, "a non-empty label key")
    operator = expression.get("operator")
    if operator not in operators:
        raise SpecError(f"{where}.operator", operator, f"one of {', '.join(sorted(operators))}")
    values = expression.get("values") or []
    if not isinstance(values, list):
        raise SpecError(f"{where}.values", values, "a list of strings")
    texts = tuple(sorted({str(v) for v in values}))
    if operator in ("In", "NotIn") and not texts:
        raise SpecError(f"{where}.values", values, f"at least one value for {operator}")
    if operator in ("Exists", "DoesNotExist") and texts:
        raise SpecError(f"{where}.values", values, f"no values for {operator}")
    if operator in ("Gt", "Lt"):
        if len(texts) != 1 or _integer(texts[0]) is None:
            raise SpecError(f"{where}.values", values, f"exactly one integer for {operator}")
    return Requirement(key, operator, texts)  # type: ignore[arg-type]
