"""Kubernetes resource quantities as exact integers in base units.

The scheduler compares requests with allocatable many thousands of times a second, so every
quantity is parsed once into an integer in the resource's base unit: milli-cores for `cpu`
(Kubernetes' own precision for CPU), bytes for memory and storage, plain counts for everything
else (`pods`, `hypermesh.io/gpu`). Integers make "fits" exact; they are stored in float64 arrays
by the node matrix, which represents every integer below 2**53 exactly.

Parsing is exact (`fractions.Fraction`, never binary floats) and rounds up to the base unit, as
Kubernetes' `MilliValue()`/`Value()` do: "0.5" bytes asks for one byte, never zero. The grammar is
the one in the CRD pattern: sign, decimal number, then either a binary suffix (Ki..Ei), a decimal
suffix (n u m k M G T P E) or a decimal exponent (e3, E-2).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from functools import lru_cache

__all__ = [
    "QuantityError",
    "format_quantity",
    "milli_resources",
    "parse_quantity",
    "to_base_units",
]

_GRAMMAR = re.compile(
    r"^(?P<sign>[+-])?(?P<number>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:(?P<binary>[KMGTPE]i)|(?P<decimal>[numkMGTPE])|[eE](?P<exponent>[+-]?[0-9]+))?$"
)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_ALLOWED = (
    "a number with an optional binary suffix (Ki, Mi, Gi, Ti, Pi, Ei), decimal suffix "
    "(n, u, m, k, M, G, T, P, E) or exponent (e3), e.g. 100m, 1.5, 64Mi, 1G"
)

milli_resources = frozenset({"cpu"})
"""Resources measured in thousandths: a request of "1" cpu is 1000 in base units."""


class QuantityError(ValueError):
    """A quantity that does not parse, or is negative where a request must not be."""

    def __init__(self, value: object, *, field: str = "", problem: str = "") -> None:
        self.value = value
        self.field = field
        self.problem = problem or f"expected {_ALLOWED}"
        where = f"{field}: " if field else ""
        super().__init__(f"{where}invalid quantity {value!r}: {self.problem}")


def parse_quantity(value: str | int | float, *, field: str = "") -> Fraction:
    """The exact value of a quantity ("1.5Gi" -> 1610612736); `field` names it in errors."""
    if isinstance(value, bool):
        raise QuantityError(value, field=field, problem="a boolean is not a quantity")
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QuantityError(value, field=field, problem="must be a finite number")
        return Fraction(value)
    if not isinstance(value, str):
        raise QuantityError(value, field=field, problem=f"{type(value).__name__} is not a quantity")
    return _parse_text(value.strip(), field)


def to_base_units(resource: str, value: str | int | float, *, field: str = "") -> int:
    """A non-negative request or capacity as an integer in the resource's base unit, rounded up."""
    if isinstance(value, str):
        return _to_base_units_cached(resource, value, field)
    return _to_base_units(resource, value, field)


@lru_cache(maxsize=4096)
def _to_base_units_cached(resource: str, value: str, field: str) -> int:
    # Replicas repeat the same few strings ("100m", "128Mi"): parse each once per process.
    return _to_base_units(resource, value, field)


def _to_base_units(resource: str, value: str | int | float, field: str) -> int:
    exact = parse_quantity(value, field=field)
    if exact < 0:
        raise QuantityError(value, field=field, problem="must not be negative")
    if resource in milli_resources:
        exact *= 1000
    return math.ceil(exact)


def format_quantity(resource: str, amount: int) -> str:
    """The shortest canonical text for `amount` base units; `to_base_units` reads it back."""
    if amount < 0:
        raise QuantityError(amount, problem="must not be negative")
    if resource in milli_resources:
        return str(amount // 1000) if amount % 1000 == 0 else f"{amount}m"
    if amount == 0:
        return "0"
    for suffix, factor in reversed(_BINARY.items()):
        if amount % factor == 0:
            return f"{amount // factor}{suffix}"
    for suffix in ("E", "P", "T", "G", "M", "k"):
        factor = int(_DECIMAL[suffix])
        if amount % factor == 0:
            return f"{amount // factor}{suffix}"
    return str(amount)


def _parse_text(text: str, field: str) -> Fraction:
    match = _GRAMMAR.match(text)
    if match is None:
        raise QuantityError(text, field=field)
    number = Fraction(match["number"]) if match["number"] != "." else None
    if number is None:
        raise QuantityError(text, field=field)
    if match["binary"]:
        number *= _BINARY[match["binary"]]
    elif match["decimal"]:
        number *= _DECIMAL[match["decimal"]]
    elif match["exponent"] is not None:
        exponent = int(match["exponent"])
        # Beyond 10**±30 a request is a typo, and 10**(10**9) would hang the parser.
        if abs(exponent) > 30:
            raise QuantityError(text, field=field, problem="exponent out of range (|e| <= 30)")
        number *= Fraction(10) ** exponent
    return -number if match["sign"] == "-" else number
