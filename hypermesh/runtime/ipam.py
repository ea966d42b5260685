"""Instance addresses out of one node's IPv6 prefix, in a file that outlives the agent.

The node agent gives every Instance one address from its node's /64 and writes it into
`status.instanceIP`, where Services and other nodes find it. Two rules follow from that: an
address must never be handed to two Instances at once, and an address that was just released
should not come back at once, because a peer or an Endpoints object may still point at it for a
moment. The pool therefore counts upward through the prefix and only wraps around (taking the
lowest address not in use) after the whole range has been handed out once; in a /64 that never
happens in practice, yet correctness does not rest on it, and the file stays small because there
is no list of freed addresses to keep.

The state lives in one JSON file, replaced atomically (temporary file, fsync, rename, fsync of
the directory) on every change, so a crash leaves either the old or the new allocation and
never half of one. Every operation holds an exclusive `flock` on a lock file beside it and
re-reads the file, so threads and even two processes sharing a directory cannot hand out the
same address. Besides the address, each entry records the names of the Instance's network
namespace and host-side veth (chosen here, under the same lock, so they are unique too) and
whether its setup finished; `hypermesh.runtime.network` is the only user and owns what the
names mean.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from hypermesh.runtime import statefile

__all__ = ["AddressPool", "Allocation", "AllocationError"]

# ::0 is the subnet-router anycast address and ::1 the node's gateway (the bridge).
FIRST_OFFSET = 2
# RFC 2526 reserves the highest 128 interface identifiers of a /64 for subnet anycast.
RFC2526_RESERVED = 128


class AllocationError(Exception):
    """The pool cannot serve the request: exhausted, or its state file is unusable."""


@dataclass(frozen=True)
class Allocation:
    """One Instance's address and the names of its network namespace and host veth."""

    instance_id: str
    address: IPv6Address
    netns: str
    host_veth: str
    # False until the network was fully built; a crash before that leaves ready=False.
    ready: bool


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: IPv6Address
    netns: str
    host_veth: str
    ready: bool = False


class _State(BaseModel):
    """The file's format; `next` is the offset in the prefix of the next address to try."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    prefix: IPv6Network
    next: int = FIRST_OFFSET
    instances: dict[str, _Entry] = {}


class AddressPool:
    """Hands out addresses of `prefix` to instance ids, persisted in the JSON file `path`."""

    def __init__(self, prefix: IPv6Network, path: Path) -> None:
        self.prefix = prefix
        self.path = path
        self.first = FIRST_OFFSET
        reserved = RFC2526_RESERVED if prefix.prefixlen <= 64 else 0
        self.last = prefix.num_addresses - 1 - reserved
        if self.last < self.first:
            raise AllocationError(f"prefix {prefix} is too small to hold any Instance address")
        path.parent.mkdir(parents=True, exist_ok=True)
        # Fail now, not at the first attach, if the file belongs to another prefix or is broken.
        with self._locked(write=False):
            pass

    # Reading

    def get(self, instance_id: str) -> Allocation | None:
        """The allocation of `instance_id`, or None."""
        with self._locked(write=False) as state:
            entry = state.instances.get(instance_id)
            return None if entry is None else _allocation(instance_id, entry)

    def allocations(self) -> list[Allocation]:
        """Every allocation, in address order."""
        with self._locked(write=False) as state:
            found = [_allocation(key, entry) for key, entry in state.instances.items()]
        return sorted(found, key=lambda allocation: allocation.address)

    # Changing

    def reserve(self, instance_id: str, names: Iterable[tuple[str, str]]) -> Allocation:
        """Allocate an address for `instance_id` (or return the one it has).

        `names` yields candidate (netns, host veth) pairs; the first pair no other instance uses
        is recorded, which settles the rare hash collision between two instance ids.
        """
        with self._locked(write=True) as state:
            existing = state.instances.get(instance_id)
            if existing is not None:
                return _allocation(instance_id, existing)
            taken = {e.netns for e in state.instances.values()}
            taken |= {e.host_veth for e in state.instances.values()}
            free = ((ns, veth) for ns, veth in names if ns not in taken and veth not in taken)
            chosen = next(free, None)
            if chosen is None:
                raise AllocationError(f"no unused interface names left for {instance_id!r}")
            netns, host_veth = chosen
            entry = _Entry(address=self._next_address(state), netns=netns, host_veth=host_veth)
            state.instances[instance_id] = entry
            return _allocation(instance_id, entry)

    def mark_ready(self, instance_id: str) -> None:
        """Record that the network of `instance_id` is fully built."""
        with self._locked(write=True) as state:
            entry = state.instances.get(instance_id)
            if entry is None:
                raise AllocationError(f"{instance_id!r} has no allocation in {self.path}")
            entry.ready = True

    def release(self, instance_ids: Iterable[str]) -> list[Allocation]:
        """Forget the allocations of `instance_ids`; returns those that existed."""
        with self._locked(write=True) as state:
            released = []
            for instance_id in instance_ids:
                entry = state.instances.pop(instance_id, None)
                if entry is not None:
                    released.append(_allocation(instance_id, entry))
            return released

    # Internals

    def _next_address(self, state: _State) -> IPv6Address:
        used = {int(e.address) - int(self.prefix.network_address) for e in state.instances.values()}
        if len(used) >= self.last - self.first + 1:
            raise AllocationError(f"no free address left in {self.prefix}")
        offset = state.next if self.first <= state.next <= self.last else self.first
        while offset in used:
            offset = offset + 1 if offset < self.last else self.first
        state.next = offset + 1 if offset < self.last else self.first
        return self.prefix.network_address + offset

    @contextlib.contextmanager
    def _locked(self, *, write: bool) -> Iterator[_State]:
        """The current state under an exclusive lock; saved on exit when `write` is set."""
        with statefile.exclusive(self.path):
            state = self._load()
            yield state
            if write:
                self._save(state)

    def _load(self) -> _State:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return _State(prefix=self.prefix)
        try:
            state = _State.model_validate_json(raw)
        except ValidationError as exc:
            raise AllocationError(f"{self.path} is not a valid address state file: {exc}") from exc
        if state.prefix != self.prefix:
            raise AllocationError(
                f"{self.path} holds addresses of {state.prefix}, but this node's prefix is "
                f"{self.prefix}: detach every Instance or move the file away first"
            )
        seen: dict[IPv6Address, str] = {}
        for instance_id, entry in state.instances.items():
            offset = int(entry.address) - int(self.prefix.network_address)
            if entry.address not in self.prefix or not self.first <= offset <= self.last:
                raise AllocationError(
                    f"{self.path}: instances[{instance_id!r}].address {entry.address} is not an "
                    f"Instance address of {self.prefix}"
                )
            if entry.address in seen:
                raise AllocationError(
                    f"{self.path}: {entry.address} is given to both {seen[entry.address]!r} and "
                    f"{instance_id!r}"
                )
            seen[entry.address] = instance_id
        return state

    def _save(self, state: _State) -> None:
        statefile.save(self.path, state.model_dump_json(indent=1).encode())


def _allocation(instance_id: str, entry: _Entry) -> Allocation:
    return Allocation(
        instance_id=instance_id,
        address=entry.address,
        netns=entry.netns,
        host_veth=entry.host_veth,
        ready=entry.ready,
    )
