"""Renewal time and failure backoff, as cert-manager computes them."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypermesh.pki import renewal

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
H = datetime.timedelta(hours=1)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("24h", 86400), ("1h30m", 5400), ("6s", 6), ("0.5s", 0.5), ("100ms", 0.1), ("2h0m0s", 7200)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert renewal.parse_duration(text).total_seconds() == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "24", "h", "1d", "1h 30m", "-1h", "1h30"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        renewal.parse_duration(text)


def test_format_duration() -> None:
    assert renewal.format_duration(2 * H) == "2h0m0s"
    assert renewal.format_duration(datetime.timedelta(seconds=90)) == "1m30s"
    assert renewal.format_duration(datetime.timedelta(seconds=6)) == "6s"


def test_default_renewal_is_at_two_thirds() -> None:
    assert renewal.renewal_time(T0, T0 + 24 * H, None) == T0 + 16 * H


def test_renew_before_counts_back_from_expiry() -> None:
    assert renewal.renewal_time(T0, T0 + 24 * H, 2 * H) == T0 + 22 * H


def test_renew_before_longer_than_the_lifetime_falls_back_to_two_thirds() -> None:
    # A CA that clamped the lifetime below renewBefore must not make renewal due at once.
    assert renewal.renewal_time(T0, T0 + 3 * H, 5 * H) == T0 + 2 * H


def test_renewal_time_is_whole_seconds() -> None:
    at = renewal.renewal_time(T0, T0 + datetime.timedelta(seconds=10), None)
    assert at.microsecond == 0 and at == T0 + datetime.timedelta(seconds=6)


@given(
    lifetime=st.integers(min_value=3, max_value=10**8),
    before=st.one_of(st.none(), st.integers(min_value=1, max_value=10**8)),
)
def test_renewal_is_inside_the_validity(lifetime: int, before: int | None) -> None:
    not_after = T0 + datetime.timedelta(seconds=lifetime)
    renew_before = None if before is None else datetime.timedelta(seconds=before)
    at = renewal.renewal_time(T0, not_after, renew_before)
    assert T0 <= at < not_after


def test_backoff_doubles_from_an_hour_to_32_hours() -> None:
    delays = [renewal.backoff_delay(n) / H for n in range(0, 9)]
    assert delays == [0, 1, 2, 4, 8, 16, 32, 32, 32]
    assert renewal.backoff_delay(10_000) / H == 32


def test_backoff_scales_for_tests() -> None:
    assert renewal.backoff_delay(3, base=0.5, cap=4).total_seconds() == 2.0
    assert renewal.backoff_delay(9, base=0.5, cap=4).total_seconds() == 4.0
    assert renewal.next_attempt(T0, 2, base=1, cap=60) == T0 + datetime.timedelta(seconds=2)
