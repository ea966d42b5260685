"""Kubernetes quantities: exact parsing into base units, precise errors, format round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypermesh.scheduler.quantities import (
    QuantityError,
    format_quantity,
    parse_quantity,
    to_base_units,
)

FAST = settings(max_examples=300, deadline=None)


@pytest.mark.parametrize(
    ("resource", "text", "expected"),
    [
        ("cpu", "100m", 100),
        ("cpu", "1", 1000),
        ("cpu", "1.5", 1500),
        ("cpu", "0.1", 100),
        ("cpu", 2, 2000),
        ("cpu", "2e3", 2_000_000),
        ("cpu", "1e-3", 1),
        ("cpu", "1u", 1),  # rounded up to one milli-core, never zero
        ("memory", "64Mi", 64 * 2**20),
        ("memory", "1Gi", 2**30),
        ("memory", "1G", 10**9),
        ("memory", "500k", 500_000),
        ("memory", "1.5Gi", 3 * 2**29),
        ("memory", "0.5", 1),
        ("memory", "5.", 5),
        ("memory", ".5Ki", 512),
        ("pods", "110", 110),
        ("hypermesh.io/gpu", "2", 2),
        ("memory", " 1Ki ", 1024),
    ],
)
def test_parses_into_base_units(resource: str, text: str | int, expected: int) -> None:
    assert to_base_units(resource, text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1.2.3", "1Ki2", "1 Gi", "Gi", "1kb", "--1", "1e", "."])
def test_rejects_malformed_text_with_the_field(text: str) -> None:
    with pytest.raises(QuantityError) as caught:
        to_base_units("memory", text, field="spec.containers[0].resources.requests.memory")
    message = str(caught.value)
    assert message.startswith("spec.containers[0].resources.requests.memory: invalid quantity")
    assert "Mi" in message  # says what is allowed


def test_rejects_negative_requests_and_absurd_exponents() -> None:
    with pytest.raises(QuantityError, match="must not be negative"):
        to_base_units("cpu", "-1")
    with pytest.raises(QuantityError, match="exponent out of range"):
        parse_quantity("1e999999999")
    with pytest.raises(QuantityError, match="boolean"):
        parse_quantity(True)


@pytest.mark.parametrize(
    ("resource", "amount", "text"),
    [
        ("cpu", 1500, "1500m"),
        ("cpu", 2000, "2"),
        ("memory", 2**30, "1Gi"),
        ("memory", 10**9, "1G"),
        ("memory", 1536 * 2**20, "1536Mi"),
        ("memory", 7, "7"),
        ("pods", 0, "0"),
    ],
)
def test_formats_canonically(resource: str, amount: int, text: str) -> None:
    assert format_quantity(resource, amount) == text


@FAST
@given(st.sampled_from(["cpu", "memory", "pods"]), st.integers(min_value=0, max_value=2**62))
def test_format_then_parse_round_trips(resource: str, amount: int) -> None:
    assert to_base_units(resource, format_quantity(resource, amount)) == amount


@FAST
@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(["", "m", "k", "M", "G", "Ki", "Mi", "Gi"]),
)
def test_parse_agrees_with_the_suffix_arithmetic(number: int, suffix: str) -> None:
    factors = {"": 1, "m": 0.001, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10,
               "Mi": 2**20, "Gi": 2**30}
    exact = parse_quantity(f"{number}{suffix}")
    assert abs(float(exact) - number * factors[suffix]) <= 1e-9 * max(1, number * factors[suffix])
