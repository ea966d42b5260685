"""Object metadata rules every kind shares.

The server owns part of `metadata` (uid, resourceVersion, generation, creationTimestamp,
deletionTimestamp, managedFields) and validates the rest the same way for every kind: names,
labels, annotations, finalizers. Keeping those rules here means a CRD registered at run time gets
exactly the treatment of a built-in kind.
"""

from __future__ import annotations

import os
import random
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from hypermesh.resources.registry import ResourceType

# Fields of metadata that only the server may set; client values are replaced on every write.
SERVER_FIELDS = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet Kubernetes uses, no vowels


_last_second: tuple[int, str] = (-1, "")


def now() -> str:
    """The current time as Kubernetes writes timestamps (RFC 3339, seconds, UTC).

    Timestamps have one-second resolution and every write takes one or two, so the string is
    made once per second (formatting it was ~2% of a create)."""
    global _last_second
    second = int(time.time())
    cached = _last_second
    if cached[0] == second:
        return cached[1]
    text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    _last_second = (second, text)
    return text


# UIDs and generated names must be unique, not secret: a generator seeded once from the OS
# costs ~1 µs where uuid4() reads /dev/urandom each time (~20 µs measured on these VMs).
_random = random.Random(os.urandom(32))


def new_uid() -> str:
    return str(uuid.UUID(int=_random.getrandbits(128), version=4))


def generate_name(prefix: str) -> str:
    """`generateName` + five random characters, as the Kubernetes API server does it."""
    return prefix + "".join(_random.choices(_SUFFIX_ALPHABET, k=5))


def spec_part(obj: dict[str, Any], rtype: ResourceType) -> dict[str, Any]:
    """What bumps `generation` when it changes: everything but metadata (and status when the
    kind has a status subresource)."""
    skip = {"metadata", "apiVersion", "kind"}
    if rtype.has_status:
        skip.add("status")
    return {k: v for k, v in obj.items() if k not in skip}


def _name_causes(name: Any, rtype: ResourceType, field: str) -> list[dict[str, str]]:
    if not isinstance(name, str) or not name:
        return [{"type": "FieldValueRequired", "field": field, "message": "Required value: name or generateName is required"}]
    # Namespaces are DNS labels; everything else is a DNS subdomain (the common CRD rule).
    if rtype.kind == "Namespace":
        ok, rule, limit = bool(_DNS_LABEL.match(name)), "a lowercase RFC 1123 label", 63
    else:
        ok, rule, limit = bool(_DNS_SUBDOMAIN.match(name)), "a lowercase RFC 1123 subdomain", 253
    if ok and len(name) <= limit:
        return []
    return [
        {
            "type": "FieldValueInvalid",
            "field": field,
            "message": f'Invalid value: "{name}": must be {rule} of at most {limit} characters, '
            "consisting of lower case alphanumeric characters, '-' or '.', and must start "
            "and end with an alphanumeric character",
        }
    ]


def _key_problem(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return "prefix part must be a lowercase RFC 1123 subdomain"
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return (
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start "
            "and end with an alphanumeric character, at most 63 characters"
        )
    return None


def validate_metadata(obj: dict[str, Any], rtype: ResourceType) -> list[dict[str, str]]:
    """Causes (in `Status.details.causes` form) for everything wrong in `metadata`."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return [{"type": "FieldValueRequired", "field": "metadata", "message": "Required value"}]
    causes = _name_causes(meta.get("name"), rtype, "metadata.name")
    labels = meta.get("labels")
    if labels is not None:
        if not isinstance(labels, dict):
            causes.append({"type": "FieldValueTypeInvalid", "field": "metadata.labels", "message": "must be a map of string to string"})
        else:
            for key, value in labels.items():
                problem = _key_problem(key)
                if problem:
                    causes.append({"type": "FieldValueInvalid", "field": "metadata.labels", "message": f'Invalid value: "{key}": {problem}'})
                if not isinstance(value, str):
                    causes.append({"type": "FieldValueTypeInvalid", "field": f"metadata.labels.{key}", "message": f"Invalid value: {value!r}: label values must be strings"})
                elif len(value) > 63 or not _LABEL_VALUE.match(value):
                    causes.append({"type": "FieldValueInvalid", "field": f"metadata.labels.{key}", "message": f'Invalid value: "{value}": a label value must be empty or at most 63 alphanumeric characters, \'-\', \'_\' or \'.\', starting and ending with an alphanumeric character'})
    annotations = meta.get("annotations")
    if annotations is not None:
        if not isinstance(annotations, dict):
            causes.append({"type": "FieldValueTypeInvalid", "field": "metadata.annotations", "message": "must be a map of string to string"})
        else:
            total = 0
            for key, value in annotations.items():
                problem = _key_problem(key)
                if problem:
                    causes.append({"type": "FieldValueInvalid", "field": "metadata.annotations", "message": f'Invalid value: "{key}": {problem}'})
                if not isinstance(value, str):
                    causes.append({"type": "FieldValueTypeInvalid", "field": f"metadata.annotations.{key}", "message": "annotation values must be strings"})
                else:
                    total += len(key) + len(value)
            if total > 256 * 1024:
                causes.append({"type": "FieldValueTooLong", "field": "metadata.annotations", "message": "Too long: must have at most 262144 bytes"})
    finalizers = meta.get("finalizers")
    if finalizers is not None:
        if not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers):
            causes.append({"type": "FieldValueTypeInvalid", "field": "metadata.finalizers", "message": "must be a list of strings"})
        else:
            for i, fin in enumerate(finalizers):
                problem = _key_problem(fin)
                if problem:
                    causes.append({"type": "FieldValueInvalid", "field": f"metadata.finalizers[{i}]", "message": f'Invalid value: "{fin}": {problem}'})
    owners = meta.get("ownerReferences")
    if owners is not None:
        if not isinstance(owners, list):
            causes.append({"type": "FieldValueTypeInvalid", "field": "metadata.ownerReferences", "message": "must be a list"})
        else:
            for i, ref in enumerate(owners):
                for required in ("apiVersion", "kind", "name", "uid"):
                    if not isinstance(ref, dict) or not isinstance(ref.get(required), str) or not ref.get(required):
                        causes.append({"type": "FieldValueRequired", "field": f"metadata.ownerReferences[{i}].{required}", "message": "Required value"})
    return causes
