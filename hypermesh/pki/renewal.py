"""When a certificate is renewed, and how long a failed issuance waits before the next try.

Both rules are cert-manager's, so a Certificate behaves the same in either system:

- renewal happens `renewBefore` ahead of expiry; when `renewBefore` is unset, or not shorter
  than the certificate's actual lifetime (a CA may have clamped it), at two thirds of the
  lifetime. The time is truncated to whole seconds, as `status.renewalTime` is written.
- after the n-th consecutive failure the next attempt waits `base * 2**(n-1)`, at most `cap`
  (cert-manager: 1 h doubling to 32 h). Both are parameters so tests can scale them down.

Durations are Go duration strings (`24h`, `1h30m`, `6s`), which is what the CRD accepts.
"""

from __future__ import annotations

import datetime
import re

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
DEFAULT_BACKOFF_BASE = 3600.0
DEFAULT_BACKOFF_CAP = 32 * 3600.0


def parse_duration(text: str) -> datetime.timedelta:
    """A Go duration (`24h`, `1h30m`, `0.5s`) as a timedelta; ValueError names the input."""
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise ValueError(f"{text!r} is not a duration such as 24h, 90m or 1h30m")
    return datetime.timedelta(seconds=total)


def format_duration(delta: datetime.timedelta) -> str:
    """A timedelta the way Go prints durations (`2h0m0s`, `1m30s`, `6s`)."""
    seconds = delta.total_seconds()
    hours, rest = divmod(int(seconds), 3600)
    minutes, whole = divmod(rest, 60)
    fraction = seconds - int(seconds)
    tail = f"{whole + fraction:g}s"
    if hours:
        return f"{hours}h{minutes}m{tail}"
    if minutes:
        return f"{minutes}m{tail}"
    return tail


def renewal_time(
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    renew_before: datetime.timedelta | None,
) -> datetime.datetime:
    """When to renew a certificate valid from `not_before` to `not_after`."""
    lifetime = not_after - not_before
    if renew_before is None or renew_before >= lifetime:
        renew_before = lifetime / 3
    return (not_after - renew_before).replace(microsecond=0)


def backoff_delay(
    failures: int,
    *,
    base: float = DEFAULT_BACKOFF_BASE,
    cap: float = DEFAULT_BACKOFF_CAP,
) -> datetime.timedelta:
    """The wait after `failures` consecutive failed issuances (none after zero)."""
    if failures <= 0:
        return datetime.timedelta(0)
    # min() before the power would still overflow a float for absurd counts; clamp the exponent.
    return datetime.timedelta(seconds=min(cap, base * 2 ** min(failures - 1, 64)))


def next_attempt(
    last_failure: datetime.datetime,
    failures: int,
    *,
    base: float = DEFAULT_BACKOFF_BASE,
    cap: float = DEFAULT_BACKOFF_CAP,
) -> datetime.datetime:
    """The earliest time the next issuance may be tried."""
    return last_failure + backoff_delay(failures, base=base, cap=cap)
