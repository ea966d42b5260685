"""Strategic merge patch, for the built-in Kubernetes kinds only.

kubectl knows the Kubernetes kinds (Namespace, Secret, Event, Lease, PriorityClass, CRDs) from
its own scheme, so a client-side `kubectl apply` or a plain `kubectl patch` of them sends a
strategic merge patch, not a JSON merge patch. For custom kinds (HyperMesh's own are CRDs) the
server answers 415, as Kubernetes does for CRDs. The core kinds
HyperMesh serves have almost no merge-keyed lists, so this is a JSON merge patch that also
understands the directives kubectl emits (`$patch`, `$retainKeys`, `$setElementOrder/...`,
`$deleteFromPrimitiveList/...`) and the two merge-strategy lists of ObjectMeta: `finalizers`
(a set) and `ownerReferences` (keyed by uid).
"""

from __future__ import annotations

import copy
from typing import Any

from hypermesh.api.patching import PatchError

# The groups of the built-in kinds kubectl sends strategic merge patches for; no CRD may claim
# them (customresources.RESERVED_GROUPS).
BUILTIN_GROUPS = frozenset({"", "coordination.k8s.io", "scheduling.k8s.io", "apiextensions.k8s.io"})

# Lists merged rather than replaced, by path, with their merge key (None: a set of scalars).
_MERGE_LISTS: dict[tuple[str, ...], str | None] = {
    ("metadata", "finalizers"): None,
    ("metadata", "ownerReferences"): "uid",
}


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Apply `patch` to `target` without mutating either."""
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    return _merge(copy.deepcopy(target) if isinstance(target, dict) else {}, patch, ())


def _merge(target: dict[str, Any], patch: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return {}
    if directive is not None:
        raise PatchError(f'unknown $patch directive "{directive}" at {".".join(path) or "the top level"}')
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$setElementOrder/") or key in ("$retainKeys", "$patch"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(target.get(field), list) and isinstance(value, list):
                target[field] = [item for item in target[field] if item not in value]
            continue
        here = (*path, key)
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            target[key] = _merge(target[key], value, here)
        elif isinstance(value, dict):
            target[key] = _merge({}, value, here)
        elif isinstance(value, list) and here in _MERGE_LISTS and isinstance(target.get(key), list):
            target[key] = _merge_list(target[key], value, _MERGE_LISTS[here])
        else:
            target[key] = copy.deepcopy(value)
    if isinstance(retain, list):
        for key in list(target):
            if key not in retain:
                del target[key]
    return target


def _merge_list(current: list[Any], patch: list[Any], key: str | None) -> list[Any]:
    if key is None:
        merged = list(current)
        merged.extend(item for item in patch if item not in merged)
        return merged
    result = [copy.deepcopy(item) for item in current]
    index = {item.get(key): i for i, item in enumerate(result) if isinstance(item, dict)}
    for item in patch:
        if not isinstance(item, dict):
            raise PatchError(f"items of a list merged by {key} must be objects")
        if item.get("$patch") == "delete":
            result = [r for r in result if not (isinstance(r, dict) and r.get(key) == item.get(key))]
            index = {r.get(key): i for i, r in enumerate(result) if isinstance(r, dict)}
        elif item.get(key) in index:
            position = index[item.get(key)]
            result[position] = _merge(result[position], item, ())
        else:
            result.append(copy.deepcopy(item))
            index[item.get(key)] = len(result) - 1
    return result
