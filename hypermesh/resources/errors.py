"""Errors raised while reading kind definitions.

A malformed CustomResourceDefinition is a user error at the moment the definition is submitted,
not at the moment an object of the kind is written: the registry and the schema compiler
therefore refuse bad definitions up front with one exception type, whose message carries the
field path of the offending part (``spec.versions[0].schema.openAPIV3Schema...``) so that the
API server can turn it into a 422 without further translation.
"""

from __future__ import annotations


class CRDError(ValueError):
    """A CustomResourceDefinition, or one of its schemas, is malformed."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}" if field else detail)
        self.field = field
        self.detail = detail
