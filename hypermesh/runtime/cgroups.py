"""Where this machine's cgroup hierarchies are, and removing a container's cgroups.

MACHINE.md: cgroups here are hybrid (v1 hierarchies per controller, cgroup2 at
/sys/fs/cgroup/unified), and runc leaves a container's directories behind when it deletes it.
The layout is read once from /proc/self/mountinfo; the runtime uses it to find the memory
controller's OOM counters and to remove every directory of a container's `cgroupsPath`.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hypermesh.runtime.rootfs import unescape_mountinfo


@dataclass(frozen=True)
class CgroupLayout:
    """Where this machine's cgroup hierarchies are mounted (v1, v2, or both: hybrid)."""

    mounts: tuple[Path, ...]
    memory: Path | None  # the hierarchy with the memory controller
    memory_v2: bool

    @classmethod
    def read(cls, mountinfo: Path = Path("/proc/self/mountinfo")) -> CgroupLayout:
        mounts: list[Path] = []
        memory: Path | None = None
        memory_v2 = False
        for line in mountinfo.read_text().splitlines():
            before, _, after = line.partition(" - ")
            fields, tail = before.split(), after.split()
            if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
                continue
            point = Path(unescape_mountinfo(fields[4]))
            if point in mounts:
                continue
            mounts.append(point)
            if tail[0] == "cgroup" and "memory" in tail[2].split(","):
                memory = point
            elif tail[0] == "cgroup2" and memory is None and _has_memory_controller(point):
                memory, memory_v2 = point, True
        return cls(tuple(mounts), memory, memory_v2)

    def directories(self, cgroups_path: str) -> list[Path]:
        """The container's directory in every hierarchy (existing or not)."""
        relative = _relative_cgroup(cgroups_path)
        return [mount / relative for mount in self.mounts]

    def memory_files(self, cgroups_path: str) -> tuple[str, str]:
        """The files holding the OOM-kill counter and (v1) the limit-hit counter."""
        if self.memory is None:
            return "", ""
        directory = self.memory / _relative_cgroup(cgroups_path)
        if self.memory_v2:
            return str(directory / "memory.events"), ""
        return str(directory / "memory.oom_control"), str(directory / "memory.failcnt")

    def remove(self, cgroups_path: str, *, attempts: int = 20) -> list[Path]:
        """Removes the container's directories (deepest first); returns those still busy."""
        left: list[Path] = []
        for directory in self.directories(cgroups_path):
            if not directory.is_dir():
                continue
            for attempt in range(attempts):
                try:
                    for parent, children, _ in os.walk(directory, topdown=False):
                        for child in children:
                            with contextlib.suppress(FileNotFoundError):
                                os.rmdir(os.path.join(parent, child))
                    os.rmdir(directory)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    # EBUSY: a killed process has not left the cgroup yet; it will shortly.
                    if attempt == attempts - 1:
                        left.append(directory)
                    else:
                        time.sleep(0.05)
        return left


def _relative_cgroup(cgroups_path: str) -> PurePosixPath:
    parts = PurePosixPath(cgroups_path).parts
    if not cgroups_path.startswith("/") or len(parts) < 2 or ".." in parts:
        raise ValueError(f"cgroups path {cgroups_path!r} is not an absolute path below the root")
    return PurePosixPath(*parts[1:])


def _has_memory_controller(mount: Path) -> bool:
    try:
        return "memory" in (mount / "cgroup.controllers").read_text().split()
    except OSError:
        return False
