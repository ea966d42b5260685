"""PriorityClasses, and the priority they stamp onto Instances when those are created.

Kubernetes splits priority in two, and so does this module. A `PriorityClass`
(scheduling.k8s.io/v1) is a cluster-wide name for an integer, checked by rules no schema can
express: user classes stop at 1,000,000,000, the `system-` names belong to the two classes the
server creates itself, `value` and `preemptionPolicy` never change, and only one class may be
the global default. Then, at create time only, an Instance (HyperMesh's Pod) that names a class
gets that class's value copied into `spec.priority`; one that names none gets the global
default, if there is one. The scheduler and preemption read only the integer, so a class edited
or deleted later never changes the priority of Instances that already run, which is the
Kubernetes contract. Workload templates are left alone for the same reason: Kubernetes resolves
at Pod create, never in a template.

Where this departs from Kubernetes, and why: with no class named and no global default,
Kubernetes forces `priority: 0` and refuses any other explicit value. HyperMesh leaves such an
Instance as it came (the scheduler reads a missing priority as 0), so Instances written before
PriorityClasses existed, and tests that set `spec.priority` directly, keep working.

Every Instance create needs the classes, so they are kept in memory rather than read from the
store each time (the same trade as the namespace map in namespaces.py). Every PriorityClass
write passes through admission, whose `after_write` hook feeds `observe`, so the index stays
exact without a watch; each entry remembers the revision it came from so that hooks running
out of commit order cannot put an older state back. A named class missing from the index is
looked up in the store before a create is refused, so a refusal never rests on the index alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hypermesh.api import errors, objects
from hypermesh.api.storage import ObjectStorage
from hypermesh.resources.registry import Registry, ResourceType

__all__ = [
    "HIGHEST_USER_VALUE",
    "SYSTEM_CLASSES",
    "ClassInfo",
    "PriorityClasses",
    "Refused",
    "keep_resolved",
    "pick_default",
    "resolve",
    "validate_class",
]

GROUP = "scheduling.k8s.io"
SYSTEM_PREFIX = "system-"
# The largest value a user-made class may have; larger ones are kept for the system classes, so
# nothing a user creates can outrank what the cluster needs to stay up.
HIGHEST_USER_VALUE = 1_000_000_000
DEFAULT_POLICY = "PreemptLowerPriority"

# name -> (value, description) of the classes every cluster has, as in Kubernetes.
SYSTEM_CLASSES: dict[str, tuple[int, str]] = {
    "system-cluster-critical": (
        2_000_000_000,
        "For components the cluster cannot work without; they may be moved to another node.",
    ),
    "system-node-critical": (
        2_000_001_000,
        "For components a node cannot work without; they must stay on their node.",
    ),
}

Cause = dict[str, str]


@dataclass(frozen=True)
class ClassInfo:
    """What admission needs of one PriorityClass."""

    name: str
    value: int
    global_default: bool = False
    preemption_policy: str = DEFAULT_POLICY

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> ClassInfo:
        """The parts of a stored (hence valid and defaulted) PriorityClass object."""
        return cls(
            name=str(obj["metadata"]["name"]),
            value=int(obj.get("value") or 0),
            global_default=obj.get("globalDefault") is True,
            preemption_policy=str(obj.get("preemptionPolicy") or DEFAULT_POLICY),
        )


class Refused(Exception):
    """An Instance create the priority rules refuse; the API answers 403, as Kubernetes does."""


# -- the rules, as pure functions ---------------------------------------------------------------


def _system_class_problem(name: str, value: Any, global_default: bool) -> str | None:
    known = SYSTEM_CLASSES.get(name)
    if known is None:
        return f"{name} is not a known system priority class"
    if value != known[0]:
        return f"value of {name} PriorityClass must be {known[0]}"
    if global_default:
        return f"globalDefault of {name} PriorityClass must be false"
    return None


def validate_class(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[Cause]:
    """What is wrong with a PriorityClass beyond its schema (422 causes, Kubernetes' wording)."""
    causes: list[Cause] = []
    name = str((new.get("metadata") or {}).get("name") or "")
    value = new.get("value")
    if name.startswith(SYSTEM_PREFIX):
        problem = _system_class_problem(name, value, new.get("globalDefault") is True)
        if problem:
            causes.append(
                {
                    "type": "FieldValueForbidden",
                    "field": "metadata.name",
                    "message": f"Forbidden: priority class names with '{SYSTEM_PREFIX}' prefix are "
                    f"reserved for system use only. error: {problem}",
                }
            )
    elif isinstance(value, int) and value > HIGHEST_USER_VALUE:
        causes.append(
            {
                "type": "FieldValueForbidden",
                "field": "value",
                "message": "Forbidden: maximum allowed value of a user defined priority is "
                f"{HIGHEST_USER_VALUE}",
            }
        )
    if old is not None:
        # Instances copied the value when they were created; changing it would leave them
        # disagreeing with their own class.
        if value != old.get("value"):
            causes.append(
                {
                    "type": "FieldValueForbidden",
                    "field": "value",
                    "message": "Forbidden: may not be changed in an update.",
                }
            )
        policy = new.get("preemptionPolicy")
        if policy != old.get("preemptionPolicy"):
            causes.append(
                {
                    "type": "FieldValueInvalid",
                    "field": "preemptionPolicy",
                    "message": f'Invalid value: "{policy}": field is immutable',
                }
            )
    return causes


def pick_default(classes: Iterable[ClassInfo]) -> ClassInfo | None:
    """The global default class, if any. Two creates racing can leave two defaults (the check
    and the write are not one step, in Kubernetes either); the lowest value wins then, as there."""
    defaults = [c for c in classes if c.global_default]
    return min(defaults, key=lambda c: (c.value, c.name)) if defaults else None


def resolve(
    spec: dict[str, Any], classes: Mapping[str, ClassInfo], *, with_policy: bool = False
) -> None:
    """Fill a new Instance's `spec.priority` (and `priorityClassName` from the global default)
    from its class; `with_policy` also fills `preemptionPolicy`. Raises `Refused`."""
    name = spec.get("priorityClassName")
    if name:
        chosen = classes.get(name)
        if chosen is None:
            raise Refused(f"no PriorityClass with name {name} was found")
    else:
        chosen = pick_default(classes.values())
        if chosen is None:
            return  # see the module docstring: no class, no default, nothing is imposed
        spec["priorityClassName"] = chosen.name
    given = spec.get("priority")
    if given is not None and given != chosen.value:
        raise Refused(
            f"the integer value of priority ({given}) must not be provided in Instance spec; "
            f"priority admission controller computed {chosen.value} from the given "
            "PriorityClass name"
        )
    spec["priority"] = chosen.value
    if with_policy:
        policy = spec.get("preemptionPolicy")
        if policy is not None and policy != chosen.preemption_policy:
            raise Refused(
                f"the string value of PreemptionPolicy ({policy}) must not be provided in "
                f"Instance spec; priority admission controller computed "
                f"{chosen.preemption_policy} from the given PriorityClass name"
            )
        spec["preemptionPolicy"] = chosen.preemption_policy


def keep_resolved(old_spec: Mapping[str, Any], new_spec: dict[str, Any]) -> None:
    """An update that leaves out what admission set at create keeps it (a PUT written from an
    older copy, or by a client that never saw the field), as Kubernetes does for Pods."""
    for field in ("priority", "preemptionPolicy"):
        if new_spec.get(field) is None and old_spec.get(field) is not None:
            new_spec[field] = old_spec[field]


def system_class_objects() -> list[dict[str, Any]]:
    """The PriorityClass objects every cluster starts with (server-owned metadata not set)."""
    return [
        {
            "apiVersion": f"{GROUP}/v1",
            "kind": "PriorityClass",
            "metadata": {"name": name},
            "value": value,
            "globalDefault": False,
            "description": description,
            "preemptionPolicy": DEFAULT_POLICY,
        }
        for name, (value, description) in SYSTEM_CLASSES.items()
    ]


# -- the admission side ------------------------------------------------------------------------


def _declares(rtype: ResourceType, field: str) -> bool:
    """Whether the kind's schema has `spec.<field>` (admission never adds undeclared fields)."""
    spec = (rtype.schema.get("properties") or {}).get("spec") or {}
    return field in (spec.get("properties") or {})


class PriorityClasses:
    """The index of PriorityClasses and the admission steps that use it."""

    def __init__(self, storage: ObjectStorage, registry: Registry) -> None:
        self.storage = storage
        self.registry = registry
        self._classes: dict[str, ClassInfo] = {}
        # name -> the revision of the last write applied (a deletion included), so a hook that
        # runs late cannot bring back an older state.
        self._revisions: dict[str, int] = {}
        self._loaded = False

    @property
    def rtype(self) -> ResourceType:
        rtype = self.registry.by_plural(GROUP, "v1", "priorityclasses")
        assert rtype is not None
        return rtype

    # -- the index

    def observe(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        """Take in a committed PriorityClass write (`new` None: deleted)."""
        if new is not None:
            self._apply(str(new["metadata"]["name"]), int(new["metadata"]["resourceVersion"]), new)
        elif old is not None:
            # The deletion's own revision is not passed on, but it follows `old`'s: anything at
            # or before `old` is older than the deletion, and a re-create comes after it.
            self._apply(str(old["metadata"]["name"]), int(old["metadata"]["resourceVersion"]), None)

    def _apply(self, name: str, revision: int, obj: dict[str, Any] | None) -> None:
        seen = self._revisions.get(name)
        if seen is not None and (revision < seen or revision == seen and obj is not None):
            return
        self._revisions[name] = revision
        if obj is None:
            self._classes.pop(name, None)
        else:
            self._classes[name] = ClassInfo.of(obj)

    async def _index(self) -> dict[str, ClassInfo]:
        if not self._loaded:
            page = await self.storage.list(self.rtype, None)
            for obj in page.items:
                self._apply(
                    str(obj["metadata"]["name"]), int(obj["metadata"]["resourceVersion"]), obj
                )
            self._loaded = True
        return self._classes

    async def ensure_system_classes(self) -> None:
        """Create the system classes that are missing (first start) and load the index."""
        for body in system_class_objects():
            name = body["metadata"]["name"]
            if await self.storage.get(self.rtype, None, name) is not None:
                continue
            body["metadata"].update(
                uid=objects.new_uid(), creationTimestamp=objects.now(), generation=1
            )
            try:
                created = await self.storage.create(self.rtype, body)
            except errors.ApiError as exc:
                if exc.reason != "AlreadyExists":
                    raise
                continue
            self.observe(None, created)
        await self._index()

    # -- admission steps

    def validate(self, old: dict[str, Any] | None, new: dict[str, Any]) -> list[Cause]:
        """Schema-independent rules of a PriorityClass write (422 causes)."""
        return validate_class(old, new)

    async def admit_class(self, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        """Refuse a second global default (403 naming the first, as Kubernetes' plugin does)."""
        if new.get("globalDefault") is not True:
            return
        name = str(new["metadata"]["name"])
        classes = await self._index()
        current = pick_default(c for c in classes.values() if c.name != name)
        if current is not None:
            raise _forbidden(
                self.rtype,
                name,
                f"PriorityClass {current.name} is already marked as default. "
                "Only one default can exist",
            )

    def check_delete(self, obj: dict[str, Any]) -> None:
        """The system classes stay: Instances of cluster components name them."""
        name = str(obj["metadata"]["name"])
        if name in SYSTEM_CLASSES:
            raise _forbidden(
                self.rtype, name, "this is a system priority class and cannot be deleted"
            )

    async def admit_instance(
        self, rtype: ResourceType, old: dict[str, Any] | None, new: dict[str, Any]
    ) -> None:
        """Resolve a new Instance's priority; on updates keep what the create resolved."""
        spec = new.get("spec")
        if not isinstance(spec, dict):
            return
        if old is not None:
            old_spec = old.get("spec")
            if isinstance(old_spec, dict):
                keep_resolved(old_spec, spec)
            return
        classes = await self._index()
        wanted = spec.get("priorityClassName")
        if wanted and wanted not in classes:
            # Not in the index: ask the store before refusing, in case a write's hook never ran.
            found = await self.storage.get(self.rtype, None, str(wanted))
            if found is not None:
                self.observe(None, found)
        try:
            resolve(spec, classes, with_policy=_declares(rtype, "preemptionPolicy"))
        except Refused as exc:
            raise _forbidden(rtype, str(new["metadata"].get("name") or ""), str(exc)) from None


def _forbidden(rtype: ResourceType, name: str, why: str) -> errors.ApiError:
    """403 in the shape Kubernetes' admission gives: `<resource> "<name>" is forbidden: why`."""
    return errors.ApiError(
        403,
        "Forbidden",
        f'{rtype.resource} "{name}" is forbidden: {why}',
        details={"name": name, "group": rtype.group, "kind": rtype.plural},
    )
