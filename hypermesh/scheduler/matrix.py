"""The node matrix: every Node as one row of numpy columns, kept in step with an informer.

Deciding where an Instance goes means asking the same questions of every node ("does it fit?",
"does it carry label L?", "how full is it?"). Asked node by node in Python that is ~1 us per node
and question; asked of a column it is a few microseconds for all 5,000 nodes. So the Node and
Instance informers feed this object (`upsert_node`, `remove_node`, `bind`, `unbind`) and it
keeps:

- `alloc`, `used`, `free`: float64 arrays shaped (resources, nodes) in base units (see
  `quantities`); a resource row appears the first time any node or instance names it, so
  extended resources such as `hypermesh.io/gpu` need no configuration. float64 holds the
  integers exactly (< 2**53), and one dtype avoids casts in the hot path.
- `unschedulable` (bool), `cost` (float, NaN when unlabelled), one bool column per distinct
  taint, and one int32 column per label key holding a code per value (-1: label absent).
- per node, the bound instances; per spread group, instance counts per zone; and the
  `indexes` over bound instances that instance (anti-)affinity and topology spread ask of.

Rows are a dense prefix `[0, n)` of arrays with spare capacity that doubles when full, so adding
nodes is amortised O(1); removing a node moves the last row into the hole (swap-with-last).
`static_version` changes whenever labels, taints, cordons or the node set change, so callers can
cache whatever depends only on those (selector and taint masks) until it moves. Between such
changes, `journal` lists the rows whose allocatable or usage changed, in order, so a caller that
scored every node can bring its scores up to date by re-scoring just those rows; when the
journal grows long it is emptied and `journal_epoch` moves, which means "score everything".

Bindings to a node the informer has not delivered yet wait under the node's name and apply when
it arrives; bindings on a removed node wait likewise in case it comes back.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from hypermesh.scheduler import quantities
from hypermesh.scheduler.indexes import AntiAffinityTerms, LabelRows, SelectorCounts
from hypermesh.scheduler.instances import AffinityTerm, InstanceSpec, SpecCache
from hypermesh.scheduler.selectors import Requirement, matches

__all__ = ["Binding", "NodeMatrix", "ZONE_LABEL", "COST_LABEL", "HOSTNAME_LABELS", "DEFAULT_PODS"]

ZONE_LABEL = "topology.hypermesh.io/zone"
COST_LABEL = "hypermesh.io/cost-per-hour"
# Topology keys meaning "this node": a node without the label is still its own domain.
HOSTNAME_LABELS = frozenset({"hypermesh.io/hostname", "kubernetes.io/hostname"})
NAME_FIELD = "metadata.name"
# Kubernetes' kubelet default when a node does not report `pods`.
DEFAULT_PODS = 110
# Past this many entries the journal starts again (and readers re-score every row).
JOURNAL_LIMIT = 4096

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int32]
Taint = tuple[str, str, str]


@dataclass(slots=True)
class Binding:
    """One instance's claim on one node, as the matrix accounts for it."""

    key: str
    namespace: str
    labels: Mapping[str, str]
    requests: tuple[tuple[str, int], ...]
    priority: int
    spread_group: str | None
    node: str
    zone: str | None = None
    # Required anti-affinity terms, which repel newcomers they match (symmetric anti-affinity).
    anti_affinity: tuple[AffinityTerm, ...] = ()


class NodeMatrix:
    """Nodes as rows of numpy columns, plus the instances bound to them."""

    def __init__(
        self, *, capacity: int = 64, priority_classes: Mapping[str, int] | None = None
    ) -> None:
        self.priority_classes: Mapping[str, int] = priority_classes or {}
        self.specs = SpecCache(self.priority_classes)
        self.n = 0
        self.static_version = 0
        self.journal: list[int] = []
        self.journal_epoch = 0
        self._cap = max(1, capacity)
        self.names: list[str] = []
        self.rows: dict[str, int] = {}
        self.resources: dict[str, int] = {}
        self.alloc = np.zeros((4, self._cap))
        self.used = np.zeros((4, self._cap))
        self.free = np.zeros((4, self._cap))
        self.inv_alloc = np.zeros((4, self._cap))
        self.unschedulable = np.zeros(self._cap, dtype=bool)
        self.cost = np.full(self._cap, np.nan)
        self.taint_columns: dict[Taint, BoolArray] = {}
        self.label_codes: dict[str, IntArray] = {}
        self._label_values: dict[str, dict[str, int]] = {}
        self.node_labels: list[dict[str, str]] = []
        self.node_taints: list[tuple[Taint, ...]] = []
        self.instances_on: list[dict[str, Binding]] = []
        self.bound: dict[str, Binding] = {}
        self._waiting: dict[str, dict[str, Binding]] = {}
        self.label_rows = LabelRows()
        self.zone_counts: dict[str, dict[str, int]] = {}
        self.selector_counts = SelectorCounts(self._cap)
        self.anti_terms = AntiAffinityTerms()
        self._numeric_cache: dict[str, FloatArray] = {}
        self._zones_cache: tuple[int, list[int]] = (-1, [])
        for name in ("cpu", "memory", "pods"):
            self.resource_row(name)

    # Nodes

    def upsert_node(self, node: Mapping[str, Any]) -> None:
        """Add or update a Node from its API dict (labels, taints, cordon, allocatable)."""
        meta = node.get("metadata") or {}
        name = str(meta.get("name") or "")
        if not name:
            raise ValueError("metadata.name: a Node needs a name")
        spec = node.get("spec") or {}
        status = node.get("status") or {}
        labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
        labels[NAME_FIELD] = name
        taints = tuple(
            (str(t.get("key") or ""), str(t.get("value") or ""), str(t.get("effect") or ""))
            for t in (spec.get("taints") or [])
        )
        allocatable = status.get("allocatable") or status.get("capacity") or {}
        amounts = {
            res: quantities.to_base_units(res, text, field=f"status.allocatable.{res}")
            for res, text in allocatable.items()
        }
        amounts.setdefault("pods", DEFAULT_PODS)
        row = self.rows.get(name)
        if row is None:
            row = self._append(name)
            changed = True
        else:
            changed = (
                labels != self.node_labels[row]
                or taints != self.node_taints[row]
                or bool(spec.get("unschedulable")) != bool(self.unschedulable[row])
            )
        if changed:
            self._set_static(row, labels, taints, bool(spec.get("unschedulable")))
            self.static_version += 1
        self._set_allocatable(row, amounts)
        waiting = self._waiting.pop(name, None)
        if waiting:
            for binding in waiting.values():
                self._attach(binding, row)

    def remove_node(self, name: str) -> None:
        """Forget a Node; its bindings wait in case a Node of that name comes back."""
        row = self.rows.pop(name, None)
        if row is None:
            return
        parked = self._waiting.setdefault(name, {})
        for binding in list(self.instances_on[row].values()):
            self._detach(binding, row)
            parked[binding.key] = binding
        last = self.n - 1
        if row != last:
            self._move_row(last, row)
        self._clear_row(last)
        self.names.pop()
        self.node_labels.pop()
        self.node_taints.pop()
        self.instances_on.pop()
        self.n -= 1
        self.static_version += 1

    def __len__(self) -> int:
        return self.n

    def __contains__(self, name: object) -> bool:
        return name in self.rows

    # Bindings

    def bind(self, instance: Mapping[str, Any], node_name: str) -> None:
        """Account an instance's requests to `node_name` (idempotent for the same key)."""
        self.bind_spec(self.specs.parse(instance), node_name)

    def bind_spec(self, spec: InstanceSpec, node_name: str) -> None:
        """`bind` for an already parsed instance."""
        old = self.bound.get(spec.key)
        if old is not None:
            if (
                old.node == node_name
                and old.requests == spec.requests
                and old.labels == spec.labels
                and old.anti_affinity == spec.anti_affinity
            ):
                return
            # Moved, resized or relabelled: account it afresh so every index follows.
            self.unbind_key(spec.key)
        binding = Binding(
            key=spec.key,
            namespace=spec.namespace,
            labels=spec.labels,
            requests=spec.requests,
            priority=spec.priority,
            spread_group=spec.spread_group,
            node=node_name,
            anti_affinity=spec.anti_affinity,
        )
        self.bound[spec.key] = binding
        row = self.rows.get(node_name)
        if row is None:
            self._waiting.setdefault(node_name, {})[spec.key] = binding
        else:
            self._attach(binding, row)

    def unbind(self, instance: Mapping[str, Any]) -> None:
        """Release what an instance held (deleted, or its bind write failed)."""
        meta = instance.get("metadata") or {}
        self.unbind_key(f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}")

    def unbind_key(self, key: str) -> None:
        """`unbind` by `namespace/name`."""
        binding = self.bound.pop(key, None)
        if binding is None:
            return
        row = self.rows.get(binding.node)
        if row is not None and key in self.instances_on[row]:
            self._detach(binding, row)
        else:
            self._waiting.get(binding.node, {}).pop(key, None)

    # Questions asked of all nodes

    def resource_row(self, name: str) -> int:
        """The row of resource `name` in `alloc`/`used`/`free`, added (all zero) if new."""
        index = self.resources.get(name)
        if index is None:
            index = len(self.resources)
            if index == self.alloc.shape[0]:
                grow = index * 2
                self.alloc = _resize2(self.alloc, grow, self._cap)
                self.used = _resize2(self.used, grow, self._cap)
                self.free = _resize2(self.free, grow, self._cap)
                self.inv_alloc = _resize2(self.inv_alloc, grow, self._cap)
            self.resources[name] = index
        return index

    def requirement_mask(self, req: Requirement) -> BoolArray:
        """Which nodes (rows [0, n)) satisfy one label requirement."""
        n = self.n
        column = self.label_codes.get(req.key)
        op = req.operator
        if column is None:
            return np.full(n, op in ("NotIn", "DoesNotExist"), dtype=bool)
        codes = column[:n]
        if op == "Exists":
            return codes >= 0
        if op == "DoesNotExist":
            return codes < 0
        if op in ("Gt", "Lt"):
            numeric = self._numeric(req.key)[codes]
            bound = float(req.values[0])
            with np.errstate(invalid="ignore"):
                return numeric > bound if op == "Gt" else numeric < bound
        known = self._label_values[req.key]
        wanted = [known[v] for v in req.values if v in known]
        if len(wanted) == 1:
            hit = codes == wanted[0]
        elif wanted:
            hit = np.isin(codes, wanted)
        else:
            hit = np.zeros(n, dtype=bool)
        return hit if op == "In" else ~hit

    def requirements_mask(self, requirements: Iterable[Requirement]) -> BoolArray:
        """Nodes satisfying every requirement (all nodes for none)."""
        mask = np.ones(self.n, dtype=bool)
        for req in requirements:
            mask &= self.requirement_mask(req)
        return mask

    def domain_mask(self, topology_key: str, rows: Iterable[int]) -> BoolArray:
        """Nodes sharing a `topology_key` value with any of `rows` (the rows themselves for
        hostname keys, since a node is its own host whether labelled or not)."""
        mask = np.zeros(self.n, dtype=bool)
        rows = list(rows)
        if not rows:
            return mask
        if topology_key in HOSTNAME_LABELS:
            mask[rows] = True
            return mask
        column = self.label_codes.get(topology_key)
        if column is None:
            return mask
        codes = column[: self.n]
        values = {int(codes[r]) for r in rows} - {-1}
        if values:
            mask = np.isin(codes, list(values))
        return mask

    def has_domain(self, topology_key: str) -> BoolArray:
        """Nodes that belong to some `topology_key` domain at all."""
        if topology_key in HOSTNAME_LABELS:
            return np.ones(self.n, dtype=bool)
        column = self.label_codes.get(topology_key)
        if column is None:
            return np.zeros(self.n, dtype=bool)
        return column[: self.n] >= 0

    def rows_with_matching(
        self, requirements: tuple[Requirement, ...], namespaces: frozenset[str]
    ) -> list[int]:
        """Rows holding at least one bound instance in `namespaces` whose labels match."""
        candidates = self.label_rows.candidates(requirements, namespaces, self.n)
        found = []
        for row in candidates:
            for binding in self.instances_on[row].values():
                if binding.namespace in namespaces and matches(requirements, binding.labels):
                    found.append(row)
                    break
        return found

    def domain_codes(self, topology_key: str) -> tuple[IntArray, int]:
        """Per row [0, n), a code for its `topology_key` domain (-1: the node has none), and
        how many codes there are. Under hostname keys every node is its own domain."""
        if topology_key in HOSTNAME_LABELS:
            return np.arange(self.n, dtype=np.int32), self.n
        column = self.label_codes.get(topology_key)
        if column is None:
            return np.full(self.n, -1, dtype=np.int32), 0
        return column[: self.n], len(self._label_values[topology_key])

    def matching_counts(
        self, namespace: str, selector: tuple[Requirement, ...]
    ) -> npt.NDArray[np.int32]:
        """Per row [0, n), how many bound instances in `namespace` match `selector`."""

        def candidates() -> Iterator[tuple[int, Iterable[Binding]]]:
            for row in self.label_rows.candidates(selector, frozenset((namespace,)), self.n):
                yield row, self.instances_on[row].values()

        return self.selector_counts.column(namespace, selector, self.n, candidates)

    def zone_column(self) -> IntArray:
        """Zone codes of rows [0, n) (-1: no zone label), see `zone_code`."""
        column = self.label_codes.get(ZONE_LABEL)
        if column is None:
            return np.full(self.n, -1, dtype=np.int32)
        return column[: self.n]

    def zone_code(self, zone: str) -> int:
        """The code of a zone value in `zone_column`, -1 if no node has it."""
        return self._label_values.get(ZONE_LABEL, {}).get(zone, -1)

    def zone_values(self) -> dict[str, int]:
        """Every zone value seen, with its code."""
        return self._label_values.get(ZONE_LABEL, {})

    def zones_in_use(self) -> list[int]:
        """Codes of the zones that currently have at least one node."""
        version, zones = self._zones_cache
        if version != self.static_version:
            zones = [int(code) for code in np.unique(self.zone_column()) if code >= 0]
            self._zones_cache = (self.static_version, zones)
        return zones

    def iter_bindings(self, row: int) -> Iterator[Binding]:
        """The instances bound to node row `row`."""
        return iter(self.instances_on[row].values())

    def check(self) -> None:
        """Assert the bookkeeping is consistent (tests call this; it is O(instances))."""
        expected = np.zeros((len(self.resources), self.n))
        for row in range(self.n):
            assert self.rows[self.names[row]] == row
            for binding in self.instances_on[row].values():
                assert binding.node == self.names[row]
                for res, amount in binding.requests:
                    expected[self.resources[res], row] += amount
        used = self.used[: len(self.resources), : self.n]
        assert np.array_equal(used, expected), "used does not equal the sum of bound requests"
        free = self.alloc[: len(self.resources), : self.n] - used
        assert np.array_equal(self.free[: len(self.resources), : self.n], free)
        # The incremental indexes equal a recount from the bindings.
        self.label_rows.check(self.instances_on, self.n)
        self.selector_counts.check(self.instances_on, self.n)
        self.anti_terms.check(self.instances_on, self.n)

    # Internals: rows

    def _append(self, name: str) -> int:
        if self.n == self._cap:
            self._grow(self._cap * 2)
        row = self.n
        self.n += 1
        self.names.append(name)
        self.rows[name] = row
        self.node_labels.append({})
        self.node_taints.append(())
        self.instances_on.append({})
        return row

    def _grow(self, cap: int) -> None:
        resources = self.alloc.shape[0]
        self.alloc = _resize2(self.alloc, resources, cap)
        self.used = _resize2(self.used, resources, cap)
        self.free = _resize2(self.free, resources, cap)
        self.inv_alloc = _resize2(self.inv_alloc, resources, cap)
        self.unschedulable = _resize1(self.unschedulable, cap, False)
        self.cost = _resize1(self.cost, cap, np.nan)
        self.taint_columns = {t: _resize1(c, cap, False) for t, c in self.taint_columns.items()}
        self.label_codes = {k: _resize1(c, cap, -1) for k, c in self.label_codes.items()}
        self.selector_counts.grow(cap)
        self._cap = cap

    def _set_static(
        self, row: int, labels: dict[str, str], taints: tuple[Taint, ...], cordoned: bool
    ) -> None:
        old_zone = self.node_labels[row].get(ZONE_LABEL)
        for key in self.node_labels[row]:
            self.label_codes[key][row] = -1
        for key, value in labels.items():
            column = self.label_codes.get(key)
            if column is None:
                column = self.label_codes[key] = np.full(self._cap, -1, dtype=np.int32)
                self._label_values[key] = {}
            codes = self._label_values[key]
            code = codes.get(value)
            if code is None:
                code = codes[value] = len(codes)
                self._numeric_cache.pop(key, None)
            column[row] = code
        for taint in self.node_taints[row]:
            self.taint_columns[taint][row] = False
        for taint in taints:
            taint_column = self.taint_columns.get(taint)
            if taint_column is None:
                taint_column = self.taint_columns[taint] = np.zeros(self._cap, dtype=bool)
            taint_column[row] = True
        self.unschedulable[row] = cordoned
        self.cost[row] = _float_or_nan(labels.get(COST_LABEL))
        self.node_labels[row] = labels
        self.node_taints[row] = taints
        if labels.get(ZONE_LABEL) != old_zone:
            # Spread counts follow the zone the instances are in now.
            for binding in self.instances_on[row].values():
                self._count_zone(binding, -1)
                binding.zone = labels.get(ZONE_LABEL)
                self._count_zone(binding, +1)

    def _set_allocatable(self, row: int, amounts: Mapping[str, int]) -> None:
        indices = [self.resource_row(res) for res in amounts]
        alloc = np.zeros(self.alloc.shape[0])
        for index, amount in zip(indices, amounts.values(), strict=True):
            alloc[index] = amount
        if np.array_equal(alloc, self.alloc[:, row]):
            return  # a status update that changed nothing here (the common heartbeat)
        self.alloc[:, row] = alloc
        self.free[:, row] = alloc - self.used[:, row]
        self.inv_alloc[:, row] = np.divide(1.0, alloc, out=np.zeros_like(alloc), where=alloc > 0)
        self._touched(row)

    def _touched(self, row: int) -> None:
        journal = self.journal
        journal.append(row)
        if len(journal) > JOURNAL_LIMIT:
            journal.clear()
            self.journal_epoch += 1

    def _move_row(self, src: int, dst: int) -> None:
        for array in (self.alloc, self.used, self.free, self.inv_alloc):
            array[:, dst] = array[:, src]
        self.unschedulable[dst] = self.unschedulable[src]
        self.cost[dst] = self.cost[src]
        for taint_column in self.taint_columns.values():
            taint_column[dst] = taint_column[src]
        for label_column in self.label_codes.values():
            label_column[dst] = label_column[src]
        name = self.names[src]
        self.names[dst] = name
        self.rows[name] = dst
        self.node_labels[dst] = self.node_labels[src]
        self.node_taints[dst] = self.node_taints[src]
        self.instances_on[dst] = self.instances_on[src]
        self.label_rows.move_row(src, dst, self.instances_on[dst].values())
        self.selector_counts.move_row(src, dst)
        self.anti_terms.move_row(src, dst, self.instances_on[dst].values())

    def _clear_row(self, row: int) -> None:
        for array in (self.alloc, self.used, self.free, self.inv_alloc):
            array[:, row] = 0.0
        self.unschedulable[row] = False
        self.cost[row] = np.nan
        for taint_column in self.taint_columns.values():
            taint_column[row] = False
        for label_column in self.label_codes.values():
            label_column[row] = -1
        self.selector_counts.clear_row(row)

    # Internals: bindings

    def _attach(self, binding: Binding, row: int) -> None:
        for res, amount in binding.requests:
            at = self.resource_row(res)
            self.used[at, row] += amount
            self.free[at, row] -= amount
        self._touched(row)
        self.instances_on[row][binding.key] = binding
        self.label_rows.attach(binding, row)
        binding.zone = self.node_labels[row].get(ZONE_LABEL)
        self._count_zone(binding, +1)
        self.selector_counts.count(binding, row, +1)
        if binding.anti_affinity:
            self.anti_terms.attach(binding, row)

    def _detach(self, binding: Binding, row: int) -> None:
        for res, amount in binding.requests:
            at = self.resources[res]
            self.used[at, row] -= amount
            self.free[at, row] += amount
        self._touched(row)
        del self.instances_on[row][binding.key]
        self.label_rows.detach(binding, row)
        self._count_zone(binding, -1)
        binding.zone = None
        self.selector_counts.count(binding, row, -1)
        if binding.anti_affinity:
            self.anti_terms.detach(binding, row)

    def _count_zone(self, binding: Binding, delta: int) -> None:
        if binding.spread_group is None or binding.zone is None:
            return
        counts = self.zone_counts.setdefault(binding.spread_group, {})
        left = counts.get(binding.zone, 0) + delta
        if left:
            counts[binding.zone] = left
        else:
            counts.pop(binding.zone, None)
            if not counts:
                del self.zone_counts[binding.spread_group]

    def _numeric(self, key: str) -> FloatArray:
        numeric = self._numeric_cache.get(key)
        if numeric is None:
            values = self._label_values[key]
            numeric = np.full(len(values) + 1, np.nan)
            for value, code in values.items():
                numeric[code] = _float_or_nan(value, integer=True)
            self._numeric_cache[key] = numeric  # the last slot (code -1) stays NaN: label absent
        return numeric


def _resize2(array: FloatArray, rows: int, cols: int) -> FloatArray:
    grown = np.zeros((rows, cols), dtype=array.dtype)
    grown[: array.shape[0], : array.shape[1]] = array
    return grown


def _resize1(array: Any, size: int, fill: Any) -> Any:
    grown = np.full(size, fill, dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown


def _float_or_nan(value: str | None, integer: bool = False) -> float:
    if value is None:
        return float("nan")
    try:
        return float(int(value)) if integer else float(value)
    except ValueError:
        return float("nan")
