"""User namespaces for Instances (`spec.hostUsers: false`): one range of host ids each, on file.

Kubernetes runs a pod with `hostUsers: false` in a user namespace of its own, and gives every
such pod on a node a different range of 65536 host ids, so that root in one pod is an
unprivileged stranger to the host and to every other pod: no shared owner for files, signals
or ptrace. The node agent does the same with this module:

- `RangePool` hands out ranges of `idmap.RANGE_SIZE` ids, from `FIRST_BASE` (2**20, far above
  any normal user and above the usual /etc/subuid allocations of 100000 + 65536 per user) up to
  `idmap.ID_LIMIT` in steps of the range size: 32752 ranges. Like `ipam.AddressPool`, it counts
  upward and only wraps around once the top is reached, so a range that was just released does
  not come back at once, in case anything of its last owner (a process, a file) outlived the
  Instance.
- The state is one JSON file, replaced atomically (temporary file, fsync, rename, fsync of the
  directory) on every change, and every operation holds an exclusive `flock` on a lock file
  beside it and re-reads the file: a crash leaves the old or the new allocation, never half of
  one, and threads or two processes sharing the directory cannot hand out one range twice.
  An agent that restarts therefore finds the range of every container still running, and
  `allocate` answers it again for the same Instance.
- `configure_netns` makes an Instance's network namespace usable from a user namespace; see there.

The order that keeps this safe is the caller's: allocate before anything owned by the range
exists, release only after the Instance's containers and files are gone, and release the ranges
of Instances that no longer exist when the agent starts (`release_orphans`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from hypermesh.runtime import iproute, statefile
from hypermesh.runtime.idmap import ID_LIMIT, RANGE_SIZE, IdRange

__all__ = ["FIRST_BASE", "STATE_FILE", "IdRange", "RangeError", "RangePool", "configure_netns"]

FIRST_BASE = 1 << 20
# Under the agent's data directory.
STATE_FILE = Path("userns") / "ranges.json"
# Per network namespace: who may bind ports below 1024, and open ICMP echo ("ping") sockets.
_UNPRIVILEGED_PORT_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
_PING_GROUP_RANGE = Path("/proc/sys/net/ipv4/ping_group_range")


class RangeError(Exception):
    """The pool cannot serve the request: exhausted, or its state file is unusable."""


class _State(BaseModel):
    """The file's format: each Instance's base id, and the slot to try next."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    size: int = RANGE_SIZE
    next: int = 0
    instances: dict[str, int] = {}


class RangePool:
    """Ranges of host ids for instance ids, persisted in the JSON file `path`."""

    def __init__(self, path: Path, *, first: int = FIRST_BASE, limit: int = ID_LIMIT) -> None:
        if first <= 0 or first % RANGE_SIZE or limit > ID_LIMIT or limit < first + RANGE_SIZE:
            raise RangeError(
                f"ranges from {first} below {limit}: the first base must be a positive multiple "
                f"of {RANGE_SIZE} and at least one range must fit below {ID_LIMIT}"
            )
        self.path = path
        self.first = first
        self.slots = (limit - first) // RANGE_SIZE
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Fail now, not at the first Instance, if the file is broken.
        with self._locked(write=False):
            pass

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> RangePool:
        """The pool of the agent whose data directory is `data_dir`."""
        return cls(data_dir / STATE_FILE)

    # Reading

    def get(self, instance_id: str) -> IdRange | None:
        """The range of `instance_id`, or None."""
        with self._locked(write=False) as state:
            base = state.instances.get(instance_id)
            return None if base is None else IdRange(base)

    def allocations(self) -> dict[str, IdRange]:
        """Every instance id with its range, in id order."""
        with self._locked(write=False) as state:
            ordered = sorted(state.instances.items(), key=lambda item: item[1])
        return {instance_id: IdRange(base) for instance_id, base in ordered}

    # Changing

    def allocate(self, instance_id: str) -> IdRange:
        """A range for `instance_id`: the one it has, or a new one no other instance holds."""
        if not instance_id:
            raise RangeError("an empty instance id cannot hold a range")
        with self._locked(write=True) as state:
            base = state.instances.get(instance_id)
            if base is None:
                base = self._next_base(state)
                state.instances[instance_id] = base
            return IdRange(base)

    def release(self, instance_ids: Iterable[str]) -> dict[str, IdRange]:
        """Forget the ranges of `instance_ids`; returns those that existed."""
        with self._locked(write=True) as state:
            released = {}
            for instance_id in instance_ids:
                base = state.instances.pop(instance_id, None)
                if base is not None:
                    released[instance_id] = IdRange(base)
            return released

    def release_orphans(self, keep: Iterable[str]) -> dict[str, IdRange]:
        """Forget every range except those of `keep` (the Instances still on this node)."""
        kept = set(keep)
        with self._locked(write=True) as state:
            gone = [instance_id for instance_id in state.instances if instance_id not in kept]
            return {instance_id: IdRange(state.instances.pop(instance_id)) for instance_id in gone}

    # Internals

    def _next_base(self, state: _State) -> int:
        used = {(base - self.first) // RANGE_SIZE for base in state.instances.values()}
        if len(used) >= self.slots:
            raise RangeError(
                f"all {self.slots} id ranges of {RANGE_SIZE} from {self.first} are in use"
            )
        slot = state.next if 0 <= state.next < self.slots else 0
        while slot in used:
            slot = (slot + 1) % self.slots
        state.next = (slot + 1) % self.slots
        return self.first + slot * RANGE_SIZE

    @contextlib.contextmanager
    def _locked(self, *, write: bool) -> Iterator[_State]:
        """The current state under an exclusive lock; saved on exit when `write` is set and it
        changed (so releasing what an Instance never had, on every teardown, costs no fsync)."""
        with statefile.exclusive(self.path):
            state = self._load()
            before = state.model_copy(deep=True)
            yield state
            if write and state != before:
                self._save(state)

    def _load(self) -> _State:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return _State()
        try:
            state = _State.model_validate_json(raw)
        except ValidationError as exc:
            raise RangeError(f"{self.path} is not a valid id range state file: {exc}") from exc
        if state.size != RANGE_SIZE:
            raise RangeError(
                f"{self.path} holds ranges of {state.size} ids, but ranges here are {RANGE_SIZE}"
            )
        last = self.first + (self.slots - 1) * RANGE_SIZE
        seen: dict[int, str] = {}
        for instance_id, base in state.instances.items():
            if not self.first <= base <= last or (base - self.first) % RANGE_SIZE:
                raise RangeError(
                    f"{self.path}: instances[{instance_id!r}] = {base} is not the base of a "
                    f"range: expected a multiple of {RANGE_SIZE} from {self.first} to {last}"
                )
            if base in seen:
                raise RangeError(
                    f"{self.path}: ids from {base} are given to both {seen[base]!r} and "
                    f"{instance_id!r}"
                )
            seen[base] = instance_id
        return state

    def _save(self, state: _State) -> None:
        statefile.save(self.path, state.model_dump_json(indent=1).encode())


def configure_netns(netns_path: Path) -> None:
    """Let an Instance with a user namespace use its network namespace as root would.

    The agent makes the network namespace, so it belongs to the host's user namespace, and a
    container's root has no capability there: it could not bind ports below 1024 (an httpd on
    port 80) nor open raw sockets for ping. Both sysctls are per network namespace, so opening
    them changes this Instance's namespace only, as containerd does for every pod: any process
    of the Instance may bind any port, and may open ICMP echo sockets (ping without CAP_NET_RAW).
    """

    def write() -> None:
        iproute.write_sysctl(_UNPRIVILEGED_PORT_START, "0")
        iproute.write_sysctl(_PING_GROUP_RANGE, f"0 {ID_LIMIT - 1}")

    iproute.in_netns(netns_path, write)
