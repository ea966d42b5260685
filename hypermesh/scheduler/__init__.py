"""The scheduler's decision core: plain Node and Instance dicts in, placement decisions out.

Pure and self-contained (no I/O, no other HyperMesh imports) so that the scheduler controller,
the node simulator and the benchmarks share one implementation. The pieces, in data-flow order:

- `quantities`: "100m", "64Mi" -> exact integers in base units.
- `selectors`, `instances`: an Instance dict -> a validated, hashable `InstanceSpec`
  (`SpecCache` reads each distinct spec once).
- `matrix`: `NodeMatrix`, every Node as a row of numpy columns, fed by the informers; with
  `indexes` over the bound instances (labels per row, selector counts, anti-affinity terms).
- `filters`, `spread`, `scoring`: boolean masks and float scores over all rows at once; `Policy`.
- `ranking`: one shape's scores kept current between decisions by re-scoring changed rows.
- `preemption`: which lower-priority instances to evict when nothing fits.
- `scheduler`: `Scheduler.decide` / `decide_batch` -> `Decision`.
"""

from hypermesh.scheduler.instances import InstanceSpec, SpecCache, SpreadConstraint, parse_instance
from hypermesh.scheduler.matrix import COST_LABEL, ZONE_LABEL, NodeMatrix
from hypermesh.scheduler.quantities import QuantityError, format_quantity, to_base_units
from hypermesh.scheduler.scheduler import Decision, Scheduler, explain
from hypermesh.scheduler.scoring import Policy
from hypermesh.scheduler.selectors import SpecError

__all__ = [
    "COST_LABEL",
    "ZONE_LABEL",
    "Decision",
    "InstanceSpec",
    "NodeMatrix",
    "Policy",
    "QuantityError",
    "Scheduler",
    "SpecCache",
    "SpecError",
    "SpreadConstraint",
    "explain",
    "format_quantity",
    "parse_instance",
    "to_base_units",
]
