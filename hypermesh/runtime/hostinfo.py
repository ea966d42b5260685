"""What this machine offers, as a Node reports it: capacity, allocatable and system info.

Capacity is what the host has (cpus, memory, process ids); allocatable keeps back a little for
the agent and the system, as kubelet's system-reserved does, so the scheduler never fills a node
to the last byte and starves the machine itself. Everything is read from /proc and `os`, so it
costs nothing and needs no privileges.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

# Kept back from the scheduler for the agent and the host (kubelet-style system reservation).
RESERVED_CPU_MILLI = 100
RESERVED_MEMORY = 256 << 20
# How many Instances one node may run (Kubernetes' default max pods).
MAX_INSTANCES = 110


def memory_bytes(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Total memory from /proc/meminfo (kB there)."""
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"{meminfo}: no MemTotal line")


def pid_limit(path: Path = Path("/proc/sys/kernel/pid_max")) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return 32768


def capacity() -> dict[str, str]:
    """The host's resources in Kubernetes quantities."""
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{memory_bytes() // 1024}Ki",
        "pids": str(pid_limit()),
        "pods": str(MAX_INSTANCES),
    }


def allocatable() -> dict[str, str]:
    """Capacity minus the reservation for the agent and the host."""
    cpus = os.cpu_count() or 1
    memory = max(0, memory_bytes() - RESERVED_MEMORY)
    return {
        "cpu": f"{max(0, cpus * 1000 - RESERVED_CPU_MILLI)}m",
        "memory": f"{memory // 1024}Ki",
        "pids": str(pid_limit()),
        "pods": str(MAX_INSTANCES),
    }


def labels(node_name: str, zone: str | None) -> dict[str, str]:
    """The well-known labels a scheduler and a user select nodes by."""
    found = {
        "kubernetes.io/hostname": node_name,
        "hypermesh.io/hostname": node_name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": _arch(),
    }
    if zone:
        found["topology.hypermesh.io/zone"] = zone
    return found


def node_info(runtime: str, runtime_version: str, agent_version: str) -> dict[str, Any]:
    """status.nodeInfo: kernel, OS and the OCI runtime the agent drives."""
    uname = platform.uname()
    return {
        "kernelVersion": uname.release,
        "osImage": _os_image(),
        "architecture": _arch(),
        "operatingSystem": "linux",
        "containerRuntimeVersion": f"{runtime}://{runtime_version}",
        "agentVersion": agent_version,
    }


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _os_image() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "Linux"
