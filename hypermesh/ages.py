"""Human ages ("5m", "3h", "2d"), rounded the way kubectl shows them.

Shared by the API server (Table date cells) and the nexus CLI (`describe`, `watch`, condition
lists). It imports nothing of HyperMesh, so the CLI can use it without paying for the resource
models and pydantic (~0.2 s of start-up).
"""

from __future__ import annotations

from datetime import UTC, datetime


def human_duration(seconds_f: float) -> str:
    """`95s`, `7m30s`, `4h5m`, `3d2h`, `2y10d`: precise when short, coarse when long."""
    seconds = int(seconds_f)
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        rest = hours % 24
        return f"{days}d{rest}h" if rest else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if years < 8:
        rest_days = days % 365
        return f"{years}y{rest_days}d" if rest_days else f"{years}y"
    return f"{years}y"


def parse_timestamp(value: object) -> datetime | None:
    """An RFC 3339 timestamp as an aware datetime, or None when it is missing or malformed."""
    if not isinstance(value, str) or not value:
        return None
    try:
        then = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return then if then.tzinfo is not None else then.replace(tzinfo=UTC)


def age(timestamp: object, now: datetime | None = None) -> str:
    """Time since an RFC 3339 timestamp, or `<unknown>` when there is none."""
    then = parse_timestamp(timestamp)
    if then is None:
        return "<unknown>"
    return human_duration(((now or datetime.now(UTC)) - then).total_seconds())
