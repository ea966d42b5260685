"""Indexes over bound instances, kept by the node matrix in step with every bind and unbind.

Three questions are asked per decision that would otherwise mean walking every bound instance:

- instance (anti-)affinity: which rows may hold an instance matching a selector? `LabelRows`
  counts, per (namespace, label, value) and per (namespace, label), the instances on each row
  carrying it; the rows under one positive requirement of a selector are a superset of the
  answer, usually a small one.
- topology spread: how many instances matching selector S in namespace N sit on each node?
  `SelectorCounts` keeps one int column (a count per node row) for each (N, S) a decision has
  asked about. A column is built by one scan the first time it is asked for and then updated
  on each bind and unbind; beyond `limit` columns the least recently asked one is dropped, so
  memory stays bounded while the constraints of the Workloads being scheduled stay warm.
- symmetric anti-affinity: which bound instances carry a required anti-affinity term that a
  newcomer's labels match? `AntiAffinityTerms` keeps, per distinct term, the rows holding
  instances with that term.

Both match label selectors against one label set at a time, which is a Python call per
selector; so each selector is filed under one "token" drawn from a positive requirement
(`(namespace, key, value)` for `In`, `(namespace, key, None)` for `Exists`, `(namespace, None,
None)` when it has neither), and a label set is only matched against the selectors filed under
its own labels. A label has one value, so no selector is matched twice for one label set.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from hypermesh.scheduler.instances import AffinityTerm
from hypermesh.scheduler.selectors import Requirement, matches

__all__ = ["AntiAffinityTerms", "Bound", "LabelRows", "SelectorCounts"]

CountArray = npt.NDArray[np.int32]
Token = tuple[str, str | None, str | None]
Selector = tuple[Requirement, ...]


class Bound(Protocol):
    """What the indexes read from a binding."""

    @property
    def namespace(self) -> str: ...

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def anti_affinity(self) -> tuple[AffinityTerm, ...]: ...


def tokens(namespaces: Iterable[str], selector: Selector) -> list[Token]:
    """Where a selector is filed: under the values of its first `In` requirement, else the key
    of its first `Exists`, else under its namespaces alone (checked against every label set)."""
    for req in selector:
        if req.operator == "In":
            return [(ns, req.key, value) for ns in namespaces for value in req.values]
    for req in selector:
        if req.operator == "Exists":
            return [(ns, req.key, None) for ns in namespaces]
    return [(ns, None, None) for ns in namespaces]


def _lookups(namespace: str, labels: Mapping[str, str]) -> Iterator[Token]:
    """The tokens a label set can hit, one per filing rule."""
    yield (namespace, None, None)
    for key, value in labels.items():
        yield (namespace, key, value)
        yield (namespace, key, None)


class LabelRows:
    """Per (namespace, label, value) and (namespace, label): instances carrying it, per row."""

    def __init__(self) -> None:
        self.pairs: dict[tuple[str, str, str], dict[int, int]] = {}
        self.keys: dict[tuple[str, str], dict[int, int]] = {}

    def attach(self, bound: Bound, row: int) -> None:
        """`bound` now sits on `row`."""
        for rows in self._rows(bound, create=True):
            rows[row] = rows.get(row, 0) + 1

    def detach(self, bound: Bound, row: int) -> None:
        """`bound` left `row`."""
        for rows in self._rows(bound):
            left = rows[row] - 1
            if left:
                rows[row] = left
            else:
                del rows[row]

    def move_row(self, src: int, dst: int, bindings: Iterable[Bound]) -> None:
        """The instances `bindings`, once on `src`, are now on row `dst`."""
        # Each index holds one count per row, shared by all the row's instances: move it once.
        moved: dict[int, dict[int, int]] = {}
        for bound in bindings:
            for rows in self._rows(bound):
                moved[id(rows)] = rows
        for rows in moved.values():
            rows[dst] = rows.pop(src)

    def candidates(
        self, requirements: Selector, namespaces: frozenset[str], n: int
    ) -> Iterable[int]:
        """Rows that may hold an instance in `namespaces` matching `requirements`, ascending."""
        # The rows indexed under one positive requirement are a superset of the answer;
        # without one (only NotIn/DoesNotExist, or an empty selector) every row is a candidate.
        best: set[int] | None = None
        for req in requirements:
            if req.operator == "In":
                rows = {
                    r
                    for ns in namespaces
                    for v in req.values
                    for r in self.pairs.get((ns, req.key, v), ())
                }
            elif req.operator == "Exists":
                rows = {r for ns in namespaces for r in self.keys.get((ns, req.key), ())}
            else:
                continue
            if best is None or len(rows) < len(best):
                best = rows
        if best is None:
            return range(n)
        return sorted(best)

    def check(self, bindings: Sequence[Mapping[str, Bound]], n: int) -> None:
        """Assert the counts equal a recount over `bindings` (rows [0, n)); for tests."""
        pairs: dict[tuple[str, str, str], dict[int, int]] = {}
        for row in range(n):
            for bound in bindings[row].values():
                for key, value in bound.labels.items():
                    rows = pairs.setdefault((bound.namespace, key, value), {})
                    rows[row] = rows.get(row, 0) + 1
        assert {k: v for k, v in self.pairs.items() if v} == pairs, "label rows drifted"

    def _rows(self, bound: Bound, create: bool = False) -> list[dict[int, int]]:
        found = []
        for key, value in bound.labels.items():
            pair = (bound.namespace, key, value)
            present = (bound.namespace, key)
            if create:
                found.append(self.pairs.setdefault(pair, {}))
                found.append(self.keys.setdefault(present, {}))
            else:
                found.append(self.pairs[pair])
                found.append(self.keys[present])
        return found


class SelectorCounts:
    """Per (namespace, selector): how many bound instances matching it are on each node row."""

    def __init__(self, capacity: int, *, limit: int = 256) -> None:
        self.limit = limit
        self._cap = capacity
        self._columns: OrderedDict[tuple[str, Selector], CountArray] = OrderedDict()
        self._filed: dict[Token, set[tuple[str, Selector]]] = {}

    def __len__(self) -> int:
        return len(self._columns)

    def column(
        self,
        namespace: str,
        selector: Selector,
        n: int,
        candidates: Callable[[], Iterable[tuple[int, Iterable[Bound]]]],
    ) -> CountArray:
        """Counts for rows [0, n). The first ask scans `candidates()`: (row, its bindings)
        for at least every row that may hold a matching instance."""
        key = (namespace, selector)
        found = self._columns.get(key)
        if found is not None:
            self._columns.move_to_end(key)
            return found[:n]
        if len(self._columns) >= self.limit:
            self._forget(next(iter(self._columns)))
        found = np.zeros(self._cap, dtype=np.int32)
        for row, bindings in candidates():
            for bound in bindings:
                if bound.namespace == namespace and matches(selector, bound.labels):
                    found[row] += 1
        self._columns[key] = found
        for token in tokens((namespace,), selector):
            self._filed.setdefault(token, set()).add(key)
        return found[:n]

    def count(self, bound: Bound, row: int, delta: int) -> None:
        """Add `delta` at `row` to every column whose selector matches `bound`."""
        if not self._columns:
            return
        filed = self._filed
        for token in _lookups(bound.namespace, bound.labels):
            keys = filed.get(token)
            if not keys:
                continue
            for key in keys:
                if matches(key[1], bound.labels):
                    self._columns[key][row] += delta

    def move_row(self, src: int, dst: int) -> None:
        """Row `src` now lives at `dst` (the node matrix's swap-with-last removal)."""
        for column in self._columns.values():
            column[dst] = column[src]

    def clear_row(self, row: int) -> None:
        """Row `row` holds no node any more."""
        for column in self._columns.values():
            column[row] = 0

    def grow(self, capacity: int) -> None:
        """Make room for `capacity` rows."""
        for key, column in self._columns.items():
            grown = np.zeros(capacity, dtype=np.int32)
            grown[: len(column)] = column
            self._columns[key] = grown
        self._cap = capacity

    def check(self, bindings: Sequence[Mapping[str, Bound]], n: int) -> None:
        """Assert every column equals a recount over `bindings` (rows [0, n)); for tests."""
        for (namespace, selector), column in self._columns.items():
            expected = np.zeros(n, dtype=np.int32)
            for row in range(n):
                for bound in bindings[row].values():
                    if bound.namespace == namespace and matches(selector, bound.labels):
                        expected[row] += 1
            assert np.array_equal(column[:n], expected), f"counts of {selector} drifted"
            assert not column[n:].any(), f"counts of {selector} beyond the last row"

    def _forget(self, key: tuple[str, Selector]) -> None:
        del self._columns[key]
        for token in tokens((key[0],), key[1]):
            keys = self._filed.get(token)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._filed[token]


class AntiAffinityTerms:
    """Per required anti-affinity term of a bound instance: the rows holding such instances."""

    def __init__(self) -> None:
        self.rows: dict[AffinityTerm, dict[int, int]] = {}
        self._filed: dict[Token, set[AffinityTerm]] = {}

    def attach(self, bound: Bound, row: int) -> None:
        """`bound` now sits on `row`."""
        for term in bound.anti_affinity:
            rows = self.rows.get(term)
            if rows is None:
                rows = self.rows[term] = {}
                for token in tokens(term.namespaces, term.selector):
                    self._filed.setdefault(token, set()).add(term)
            rows[row] = rows.get(row, 0) + 1

    def detach(self, bound: Bound, row: int) -> None:
        """`bound` left `row`."""
        for term in bound.anti_affinity:
            rows = self.rows[term]
            left = rows[row] - 1
            if left:
                rows[row] = left
                continue
            del rows[row]
            if not rows:
                del self.rows[term]
                for token in tokens(term.namespaces, term.selector):
                    terms = self._filed[token]
                    terms.discard(term)
                    if not terms:
                        del self._filed[token]

    def check(self, bindings: Sequence[Mapping[str, Bound]], n: int) -> None:
        """Assert the rows equal a recount over `bindings` (rows [0, n)); for tests."""
        terms: dict[AffinityTerm, dict[int, int]] = {}
        for row in range(n):
            for bound in bindings[row].values():
                for term in bound.anti_affinity:
                    rows = terms.setdefault(term, {})
                    rows[row] = rows.get(row, 0) + 1
        assert self.rows == terms, "anti-affinity rows drifted"

    def move_row(self, src: int, dst: int, bindings: Iterable[Bound]) -> None:
        """The instances `bindings`, once on `src`, are now on row `dst`."""
        moved: set[AffinityTerm] = set()
        for bound in bindings:
            for term in bound.anti_affinity:
                if term not in moved:
                    moved.add(term)
                    rows = self.rows[term]
                    rows[dst] = rows.pop(src)

    def matching(
        self, namespace: str, labels: Mapping[str, str]
    ) -> list[tuple[AffinityTerm, dict[int, int]]]:
        """The terms a newcomer in `namespace` with `labels` matches, with their rows."""
        if not self.rows:
            return []
        found = []
        filed = self._filed
        for token in _lookups(namespace, labels):
            terms = filed.get(token)
            if not terms:
                continue
            for term in terms:
                if matches(term.selector, labels):
                    found.append((term, self.rows[term]))
        return found
