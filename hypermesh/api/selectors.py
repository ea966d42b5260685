"""Label and field selectors: the `labelSelector`/`fieldSelector` query parameters and the
`spec.selector` of a Workload.

kubectl sends `-l tier=x` as `labelSelector=tier%3Dx`, `kubectl delete` waits with
`fieldSelector=metadata.name=<n>`, and `describe` asks for events with `involvedObject.*` field
selectors. The grammar follows Kubernetes (`k8s.io/apimachinery/pkg/labels` and `.../fields`) so
that what works against a real cluster works here, with the same canonical spelling from
`str()`. Parsing is a hand-written scanner rather than regular expressions so that every error
can say where the text went wrong and what would have been allowed there.

Field selectors are deliberately small: equality and inequality on a fixed list of fields that
the caller names per resource, because the server can only serve fields it knows how to read
(and can narrow a list by `metadata.name`/`metadata.namespace` before matching, see
`FieldSelector.exact`).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

Operator = Literal["=", "!=", "in", "notin", "exists", "!"]

_NAME_RE: Final = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN_RE: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME_MAX: Final = 63
_PREFIX_MAX: Final = 253
_NAME_RULE: Final = (
    "at most 63 characters: alphanumerics, '-', '_' or '.', starting and ending with an "
    "alphanumeric"
)
_SET_OPERATORS: Final = ("In", "NotIn", "Exists", "DoesNotExist")


class SelectorError(ValueError):
    """A selector could not be parsed or built (the API answers 400)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------------------------
# Syntax of label keys and values.


def label_key_problem(key: str) -> str | None:
    """Say what is wrong with a label key (a Kubernetes qualified name), or None if valid."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return "the prefix before '/' must not be empty"
    if slash:
        if len(prefix) > _PREFIX_MAX:
            return f"the prefix must be at most {_PREFIX_MAX} characters"
        if not _DNS_SUBDOMAIN_RE.fullmatch(prefix):
            return (
                "the prefix must be a DNS subdomain: lowercase alphanumerics, '-' and '.', "
                "each part starting and ending with an alphanumeric"
            )
    if not name:
        return "the name part must not be empty"
    if len(name) > _NAME_MAX or not _NAME_RE.fullmatch(name):
        return f"the name part must be {_NAME_RULE}"
    return None


def label_value_problem(value: str) -> str | None:
    """Say what is wrong with a label value, or None if valid (the empty value is valid)."""
    if value == "":
        return None
    if len(value) > _NAME_MAX or not _NAME_RE.fullmatch(value):
        return f"a label value must be empty or {_NAME_RULE}"
    return None


def _check_key(key: str, context: str) -> None:
    problem = label_key_problem(key)
    if problem:
        raise SelectorError(f"{context}invalid label key {key!r}: {problem}")


def _check_value(value: str, context: str) -> None:
    problem = label_value_problem(value)
    if problem:
        raise SelectorError(f"{context}invalid label value {value!r}: {problem}")


# --------------------------------------------------------------------------------------------
# Label selectors.


@dataclass(frozen=True, slots=True)
class Requirement:
    """One condition on one label; `values` is sorted and only set for =, !=, in and notin."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True when the labels satisfy this condition."""
        present = self.key in labels
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        if self.operator in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" also match objects without the label, as in Kubernetes.
        return not present or labels[self.key] not in self.values

    def __str__(self) -> str:
        if self.operator == "exists":
            return self.key
        if self.operator == "!":
            return "!" + self.key
        if self.operator in ("=", "!="):
            return f"{self.key}{self.operator}{self.values[0]}"
        return f"{self.key} {self.operator} ({','.join(self.values)})"


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A conjunction of requirements; the empty selector matches every object."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """True when every requirement holds for `labels` (None means no labels)."""
        labels = labels or {}
        return all(requirement.matches(labels) for requirement in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        return ",".join(str(requirement) for requirement in self.requirements)


def _selector(requirements: list[Requirement]) -> LabelSelector:
    # Kubernetes sorts by key (stably), which gives every selector one canonical spelling.
    requirements.sort(key=lambda requirement: requirement.key)
    return LabelSelector(tuple(requirements))


_SPECIALS: Final = "!=(),"


@dataclass(slots=True)
class _Token:
    kind: str  # "word", "!", "=", "==", "!=", "(", ")", ",", "end"
    text: str
    position: int


def _tokens(text: str) -> list[_Token]:
    """Split selector text into words and operator symbols; whitespace separates, nothing else."""
    tokens: list[_Token] = []
    i = 0
    size = len(text)
    while i < size:
        char = text[i]
        if char.isspace():
            i += 1
            continue
        if char in "!=":
            if i + 1 < size and text[i + 1] == "=":
                tokens.append(_Token(char + "=", char + "=", i))
                i += 2
            else:
                tokens.append(_Token(char, char, i))
                i += 1
            continue
        if char in "(),":
            tokens.append(_Token(char, char, i))
            i += 1
            continue
        start = i
        while i < size and not text[i].isspace() and text[i] not in _SPECIALS:
            i += 1
        tokens.append(_Token("word", text[start:i], start))
    tokens.append(_Token("end", "", size))
    return tokens


class _LabelParser:
    """Recursive descent over the token list, one requirement at a time."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.at = 0

    def fail(self, token: _Token, what: str) -> SelectorError:
        found = "the end" if token.kind == "end" else repr(token.text)
        return SelectorError(
            f"unable to parse label selector {self.text!r}: at position {token.position}: "
            f"expected {what}, found {found}"
        )

    def next(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def peek(self) -> _Token:
        return self.tokens[self.at]

    def parse(self) -> LabelSelector:
        requirements: list[Requirement] = []
        if self.peek().kind == "end":
            return LabelSelector()
        while True:
            requirements.append(self.requirement())
            token = self.next()
            if token.kind == "end":
                return _selector(requirements)
            if token.kind != ",":
                raise self.fail(token, "',' between requirements or the end")

    def key(self) -> str:
        token = self.next()
        if token.kind != "word":
            raise self.fail(token, "a label key")
        _check_key(token.text, f"label selector {self.text!r}: ")
        return token.text

    def requirement(self) -> Requirement:
        if self.peek().kind == "!":
            self.next()
            return Requirement(self.key(), "!")
        key = self.key()
        token = self.peek()
        if token.kind in (",", "end"):
            return Requirement(key, "exists")
        self.next()
        if token.kind in ("=", "==", "!="):
            value = ""
            if self.peek().kind == "word":
                value = self.next().text
            elif self.peek().kind not in (",", "end"):
                raise self.fail(self.peek(), f"a label value after {token.text!r}")
            _check_value(value, f"label selector {self.text!r}: ")
            return Requirement(key, "!=" if token.kind == "!=" else "=", (value,))
        if token.kind == "word" and token.text in ("in", "notin"):
            return Requirement(key, "in" if token.text == "in" else "notin", self.value_set())
        raise self.fail(token, "one of '=', '==', '!=', 'in', 'notin', ',' after a label key")

    def value_set(self) -> tuple[str, ...]:
        opening = self.next()
        if opening.kind != "(":
            raise self.fail(opening, "'(' to open the set of values")
        values: set[str] = set()
        while True:
            # An empty slot, as in "(a,)" or "()", is the empty value, which labels may have;
            # that is also how the canonical form spells a set holding only "".
            value = ""
            if self.peek().kind == "word":
                value = self.next().text
            _check_value(value, f"label selector {self.text!r}: ")
            values.add(value)
            token = self.next()
            if token.kind == ")":
                return tuple(sorted(values))
            if token.kind != ",":
                raise self.fail(token, "',' or ')' in the set of values")


def parse_label_selector(text: str) -> LabelSelector:
    """Parse `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-joined."""
    if not isinstance(text, str):
        raise SelectorError(f"a label selector must be a string, got {type(text).__name__}")
    return _LabelParser(text).parse()


def selector_from_spec(spec: Any, *, where: str = "selector") -> LabelSelector:
    """Build a selector from `{matchLabels, matchExpressions}`; errors name the bad field."""
    if not isinstance(spec, dict):
        raise SelectorError(f"{where}: must be an object with matchLabels and/or matchExpressions")
    unknown = sorted(set(spec) - {"matchLabels", "matchExpressions"})
    if unknown:
        raise SelectorError(
            f"{where}: unknown field {unknown[0]!r} (allowed: matchLabels, matchExpressions)"
        )
    requirements: list[Requirement] = []
    labels = spec.get("matchLabels")
    labels = {} if labels is None else labels
    if not isinstance(labels, dict):
        raise SelectorError(f"{where}.matchLabels: must be a map of label keys to values")
    for key, value in labels.items():
        at = f"{where}.matchLabels[{key!r}]: "
        if not isinstance(value, str):
            raise SelectorError(f"{at}the value must be a string, got {type(value).__name__}")
        _check_key(key, at)
        _check_value(value, at)
        requirements.append(Requirement(key, "=", (value,)))
    expressions = spec.get("matchExpressions")
    expressions = [] if expressions is None else expressions
    if not isinstance(expressions, list):
        raise SelectorError(f"{where}.matchExpressions: must be a list")
    for index, expression in enumerate(expressions):
        requirements.append(_expression(expression, f"{where}.matchExpressions[{index}]"))
    return _selector(requirements)


def _expression(expression: Any, at: str) -> Requirement:
    """Turn one `{key, operator, values}` into a requirement."""
    if not isinstance(expression, dict):
        raise SelectorError(f"{at}: must be an object with key, operator and values")
    key = expression.get("key")
    if not isinstance(key, str):
        raise SelectorError(f"{at}.key: required, must be a string")
    _check_key(key, f"{at}.key: ")
    operator = expression.get("operator")
    if operator not in _SET_OPERATORS:
        raise SelectorError(
            f"{at}.operator: unsupported value {operator!r} "
            f"(allowed: {', '.join(_SET_OPERATORS)})"
        )
    values = expression.get("values")
    values = [] if values is None else values
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise SelectorError(f"{at}.values: must be a list of strings")
    if operator in ("In", "NotIn"):
        if not values:
            raise SelectorError(f"{at}.values: must be non-empty when operator is {operator!r}")
        for value in values:
            _check_value(value, f"{at}.values: ")
        return Requirement(key, "in" if operator == "In" else "notin", tuple(sorted(set(values))))
    if values:
        raise SelectorError(f"{at}.values: must be empty when operator is {operator!r}")
    return Requirement(key, "exists" if operator == "Exists" else "!")


# --------------------------------------------------------------------------------------------
# Field selectors.


@dataclass(frozen=True, slots=True)
class FieldRequirement:
    """`field = value` or `field != value` on a dotted path of the object."""

    field: str
    operator: Literal["=", "!="]
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """True when the field's value (a missing field reads as "") satisfies the condition."""
        equal = field_value(obj, self.field) == self.value
        return equal if self.operator == "=" else not equal

    def __str__(self) -> str:
        return f"{self.field}{self.operator}{_escape_field_value(self.value)}"


@dataclass(frozen=True, slots=True)
class FieldSelector:
    """A conjunction of field requirements; the empty selector matches every object."""

    requirements: tuple[FieldRequirement, ...] = ()

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """True when every requirement holds for `obj`."""
        return all(requirement.matches(obj) for requirement in self.requirements)

    def exact(self, field: str) -> str | None:
        """The value an `=` term requires of `field`, so the caller can narrow before matching."""
        for requirement in self.requirements:
            if requirement.field == field and requirement.operator == "=":
                return requirement.value
        return None

    @property
    def empty(self) -> bool:
        return not self.requirements

    def __str__(self) -> str:
        return ",".join(str(requirement) for requirement in self.requirements)


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """Read a dotted path as a string: missing or null is "", booleans are "true"/"false"."""
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return ""
        node = node.get(part)
    if node is None or isinstance(node, (dict, list)):
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


_FIELD_ESCAPES: Final = "\\,=!"


def _escape_field_value(value: str) -> str:
    for char in _FIELD_ESCAPES:
        value = value.replace(char, "\\" + char)
    return value


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not escaped with a backslash."""
    terms: list[str] = []
    current: list[str] = []
    escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ",":
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    terms.append("".join(current))
    return terms


def _unescape_field_value(raw: str, text: str) -> str:
    """Resolve backslash escapes; a bare '=' or '!' in a value is refused, as in Kubernetes."""
    out: list[str] = []
    escaped = False
    for char in raw:
        if escaped:
            if char not in _FIELD_ESCAPES:
                raise SelectorError(
                    f"invalid field selector {text!r}: invalid escape sequence '\\{char}' "
                    f"(only \\\\, \\, \\= and \\! are allowed)"
                )
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "=!":
            raise SelectorError(
                f"invalid field selector {text!r}: unescaped {char!r} in value {raw!r}; "
                f"write '\\{char}' for a literal {char!r}"
            )
        else:
            out.append(char)
    if escaped:
        raise SelectorError(f"invalid field selector {text!r}: value {raw!r} ends with '\\'")
    return "".join(out)


def parse_field_selector(text: str, *, allowed: Collection[str]) -> FieldSelector:
    """Parse `f=v`, `f==v`, `f!=v`, comma-joined, where every `f` must be in `allowed`."""
    if not isinstance(text, str):
        raise SelectorError(f"a field selector must be a string, got {type(text).__name__}")
    if not text.strip():
        return FieldSelector()
    requirements: list[FieldRequirement] = []
    for term in _split_terms(text):
        # The first operator splits the term; "!=" and "==" are tried before "=".
        match = re.search(r"!=|==|=", term)
        if match is None:
            raise SelectorError(
                f"invalid field selector {text!r}: term {term.strip()!r} has no operator "
                "(expected field=value, field==value or field!=value)"
            )
        name = term[: match.start()].strip()
        operator: Literal["=", "!="] = "!=" if match.group() == "!=" else "="
        if not name:
            raise SelectorError(f"invalid field selector {text!r}: term {term.strip()!r} has no field")
        if name not in allowed:
            choices = ", ".join(sorted(allowed)) or "none"
            raise SelectorError(
                f"field label not supported: {name} (supported field selectors: {choices})"
            )
        value = _unescape_field_value(term[match.end() :].strip(), text)
        requirements.append(FieldRequirement(name, operator, value))
    return FieldSelector(tuple(requirements))
