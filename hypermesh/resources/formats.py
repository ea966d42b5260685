"""String formats checked by the schema validator.

Kubernetes validates a handful of OpenAPI `format`s on strings (date-time, byte, ipv6, ...)
and silently accepts formats it does not know. This module does the same for the formats that
HyperMesh's kinds and the usual CRDs use, so an unknown format never fails an object.
"""

from __future__ import annotations

import binascii
import datetime
import ipaddress
import re
from collections.abc import Callable

_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_BASE64 = re.compile(r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$")
_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
_HOSTNAME = re.compile(
    r"^[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?(\.[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)*$"
)
_MAC = re.compile(r"^([0-9a-fA-F]{2}[:-]){5}[0-9a-fA-F]{2}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S*$")
# Go's time.ParseDuration syntax, which is what `duration` strings in Kubernetes objects use.
_DURATION = re.compile(r"^[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+$|^0$")


def _date_time(value: str) -> bool:
    if _DATE_TIME.match(value) is None:
        return False
    # The regex admits month 13 and friends; the parser checks the calendar.
    try:
        datetime.datetime.fromisoformat(value.replace("z", "Z").replace("t", "T"))
    except ValueError:
        return False
    return True


def _date(value: str) -> bool:
    if _DATE.match(value) is None:
        return False
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _byte(value: str) -> bool:
    if _BASE64.match(value) is None:
        return False
    try:
        binascii.a2b_base64(value)
    except (binascii.Error, ValueError):
        return False
    return True


def _ip(version: int | None) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return False
        return version is None or address.version == version

    return check


def _cidr(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return "/" in value


def _matches(pattern: re.Pattern[str]) -> Callable[[str], bool]:
    return lambda value: pattern.match(value) is not None


# Format name -> predicate. Names absent here are accepted unchecked, as Kubernetes does.
FORMATS: dict[str, Callable[[str], bool]] = {
    "date-time": _date_time,
    "datetime": _date_time,
    "date": _date,
    "byte": _byte,
    "uuid": _matches(_UUID),
    "ipv4": _ip(4),
    "ipv6": _ip(6),
    "ip": _ip(None),
    "cidr": _cidr,
    "hostname": _matches(_HOSTNAME),
    "mac": _matches(_MAC),
    "email": _matches(_EMAIL),
    "uri": _matches(_URI),
    "duration": _matches(_DURATION),
}


def format_checker(name: str) -> Callable[[str], bool] | None:
    """The predicate of a string format, or None for a format that is not checked."""
    return FORMATS.get(name)
