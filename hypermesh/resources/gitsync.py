"""GitSync: a repository path kept applied (mirrors crds/gitsync.yaml).

The semantics are Flux's Kustomization/GitRepository folded into one kind: fetch `spec.url` at
`spec.ref` every `spec.interval`, apply the manifests under `spec.path`, prune what disappeared
(tracked in `status.inventory`), and report the applied revision in `status`. The controller is
`controllers/gitsync.py`; the mechanism (git, manifests, waves, health) is `hypermesh.gitops`.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Literal

from pydantic import Field

from hypermesh.resources.meta import Condition, Duration, Model, Resource

__all__ = [
    "CrossNamespaceRef",
    "GitRef",
    "GitSync",
    "GitSyncSpec",
    "GitSyncStatus",
    "InventoryEntry",
    "ObjectError",
    "ObjectRef",
    "SecretRef",
]


class GitRef(Model):
    """What to check out; commit wins over tag over branch, the default branch when empty."""

    branch: str | None = None
    tag: str | None = None
    commit: str | None = None


class CrossNamespaceRef(Model):
    name: str
    namespace: str | None = None


class ObjectRef(Model):
    """An object by kind and name, for health checks."""

    api_version: str | None = None
    kind: str
    name: str
    namespace: str | None = None


class InventoryEntry(ObjectRef):
    """An object the last sync applied, with a hash of the configuration applied to it."""

    digest: str | None = None


class ObjectError(ObjectRef):
    """An object the last sync could not apply, prune or find healthy, and why."""

    message: str


class SecretRef(Model):
    name: str


class GitSyncSpec(Model):
    url: Annotated[str, Field(min_length=1)]
    ref: GitRef | None = None
    path: str | None = None
    interval: Duration = "60s"
    timeout: Duration | None = None
    prune: bool = True
    suspend: bool = False
    wait: bool = False
    target_namespace: Annotated[str, Field(max_length=63)] | None = None
    depends_on: list[CrossNamespaceRef] | None = None
    health_checks: list[ObjectRef] | None = None
    secret_ref: SecretRef | None = None


class GitSyncStatus(Model):
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    conditions: list[Condition] | None = None
    last_applied_revision: str | None = None
    last_attempted_revision: str | None = None
    last_sync_time: datetime.datetime | None = None
    last_handled_sync_at: str | None = None
    inventory: list[InventoryEntry] | None = None
    errors: list[ObjectError] | None = None


class GitSync(Resource):
    api_version: Literal["hypermesh.io/v1"] = "hypermesh.io/v1"
    kind: Literal["GitSync"] = "GitSync"
    spec: GitSyncSpec
    status: GitSyncStatus | None = None
