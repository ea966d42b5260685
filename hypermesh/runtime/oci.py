"""The OCI runtime spec (a bundle's config.json) for one container of an Instance.

This is where an Instance's container, as a user wrote it, meets the image it runs and the
machine it runs on, so it is where Kubernetes' rules are applied:

- the process: `command` replaces the image's ENTRYPOINT and `args` its CMD (either alone keeps
  the other half of the image's, except that a `command` alone drops the image's CMD);
  `$(VAR)` references in command, args and env values expand from the container's env as
  kubelet expands them; env is the image's, overlaid by the container's; the user is
  `runAsUser`/`runAsGroup`, else the image's USER, with names resolved in the image's own
  /etc/passwd and /etc/group (`users`);
- resources: the memory limit, a CFS quota from the cpu limit, cpu shares from the cpu request
  (the limit when no request is given, as the API server defaults it), a pids limit;
- hardening that a user does not have to ask for: Docker's short capability list (minus what
  `securityContext.capabilities.drop` removes, plus what `add` grants), no_new_privs unless
  `allowPrivilegeEscalation: true`, the default seccomp filter of `seccomp.py`, runc's masked
  and read-only /proc and /sys paths;
- a user namespace when the Instance asks for one (`spec.hostUsers: false`): container ids
  0-65535 are host ids from `userns_base` (the range `userns.RangePool` gave the Instance), and
  the mounts a namespaced root may make replace those it may not (see `_mounts`).

It is a pure function of its inputs apart from reading the image's passwd and group files (and
this process's own open-files limit, see `nofile_limit`), so everything above is unit tested
without root. Bad input raises `SpecError` naming the field,
which the agent reports as the container's waiting message.
"""

from __future__ import annotations

import functools
import re
import resource
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from hypermesh.runtime import seccomp, users
from hypermesh.runtime.idmap import RANGE_SIZE
from hypermesh.scheduler.quantities import QuantityError, to_base_units

__all__ = [
    "ALL_CAPABILITIES",
    "DEFAULT_CAPABILITIES",
    "DEFAULT_PIDS_LIMIT",
    "DEFAULT_USERNS_BASE",
    "ImageConfigLike",
    "SpecError",
    "runtime_spec",
]

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_PIDS_LIMIT = 4096
NOFILE_LIMIT = 1048576
CAP_SYS_RESOURCE_BIT = 24
CFS_PERIOD = 100_000
# Kubernetes' bounds: no quota below 1 ms per period, shares between 2 and 2**18.
MIN_CFS_QUOTA = 1000
MIN_SHARES, MAX_SHARES = 2, 262144
# Where container uid 0 lands on the host in a user namespace when the caller does not say
# (the usual /etc/subuid start); the agent passes each Instance's own range instead.
DEFAULT_USERNS_BASE = 100_000
USERNS_SIZE = RANGE_SIZE

# What Docker grants by default; everything else is dropped.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

# Every capability of Linux 6.x, in number order; `add`/`drop` names are checked against it.
ALL_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)

# runc's defaults: kernel information a container has no business reading ...
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
# ... and kernel knobs it may read but must not turn.
READONLY_PATHS = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)


class ImageConfigLike(Protocol):
    """What runtime_spec needs of an image's config (images.ImageConfig has these fields)."""

    @property
    def entrypoint(self) -> Sequence[str]: ...

    @property
    def cmd(self) -> Sequence[str]: ...

    @property
    def env(self) -> Sequence[str]: ...

    @property
    def working_dir(self) -> str: ...

    @property
    def user(self) -> str: ...


class SpecError(ValueError):
    """A container that cannot be turned into a runtime spec; `field` says which part is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


def runtime_spec(
    *,
    container: Mapping[str, Any],
    image: ImageConfigLike,
    rootfs: Path,
    hostname: str,
    cgroups_path: str,
    netns: Path | None,
    read_only_root: bool = False,
    user_namespace: bool = False,
    userns_base: int = DEFAULT_USERNS_BASE,
    extra_mounts: Sequence[Mapping[str, Any]] = (),
    oom_score_adj: int = 0,
    field_path: str = "container",
) -> dict[str, Any]:
    """The config.json of a bundle running `container` (an Instance's spec.containers[] entry).

    `field_path` is the container's place in the Instance (e.g. "spec.containers[1]"), used in
    error messages. `extra_mounts` (OCI mount objects: volumes, /etc/hosts ...) follow the
    standard ones. With `user_namespace` the container's ids 0-65535 are host ids from
    `userns_base`, and its user must be one of them. `oom_score_adj` is written explicitly so
    the container never inherits the protected score of the shim that starts it.
    """
    security = _mapping(container.get("securityContext"), f"{field_path}.securityContext")
    privileged = bool(security.get("privileged"))
    capabilities = _capabilities(security, privileged, f"{field_path}.securityContext.capabilities")
    env, declared = _environment(container, image, hostname, field_path)
    user = _user(security, image, rootfs, field_path, user_namespace)
    nofile = nofile_limit()
    process: dict[str, Any] = {
        "terminal": False,
        "user": user.to_oci(),
        "args": _arguments(container, image, declared, field_path),
        "env": [f"{name}={value}" for name, value in env.items()],
        "cwd": _working_dir(container, image, field_path),
        "capabilities": {
            "bounding": list(capabilities),
            "effective": list(capabilities),
            "permitted": list(capabilities),
        },
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}],
        # Stricter than Kubernetes' default: setuid binaries gain nothing unless asked for.
        "noNewPrivileges": not (privileged or security.get("allowPrivilegeEscalation") is True),
        "oomScoreAdj": oom_score_adj,
    }
    namespaces: list[dict[str, str]] = [
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"},
        {"type": "network", "path": str(netns)} if netns is not None else {"type": "network"},
    ]
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "cgroupsPath": _cgroups_path(cgroups_path),
        "resources": _resources(container, privileged, field_path),
    }
    if user_namespace:
        if not 0 < userns_base <= users.MAX_ID + 1 - USERNS_SIZE:
            raise SpecError(
                "userns_base",
                f"{userns_base} cannot be the first host id of {USERNS_SIZE} (1 to "
                f"{users.MAX_ID + 1 - USERNS_SIZE})",
            )
        namespaces.append({"type": "user"})
        mapping = [{"containerID": 0, "hostID": userns_base, "size": USERNS_SIZE}]
        linux["uidMappings"] = mapping
        linux["gidMappings"] = [dict(entry) for entry in mapping]
    if not privileged:
        linux["maskedPaths"] = list(MASKED_PATHS)
        linux["readonlyPaths"] = list(READONLY_PATHS)
        linux["seccomp"] = seccomp.default_profile(capabilities)
    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {
            "path": str(rootfs),
            "readonly": bool(read_only_root or security.get("readOnlyRootFilesystem")),
        },
        "hostname": hostname,
        "mounts": _mounts(privileged, user_namespace) + [dict(m) for m in extra_mounts],
        "linux": linux,
    }


# The process


def _arguments(
    container: Mapping[str, Any],
    image: ImageConfigLike,
    declared: Mapping[str, str],
    field_path: str,
) -> list[str]:
    command = _strings(container.get("command"), f"{field_path}.command")
    args = _strings(container.get("args"), f"{field_path}.args")
    if command:
        argv = command + args
    else:
        argv = list(image.entrypoint or ()) + (args or list(image.cmd or ()))
    if not argv:
        raise SpecError(
            f"{field_path}.command",
            "nothing to run: the container sets no command or args and the image has no "
            "ENTRYPOINT or CMD",
        )
    # Kubelet expands only the container's own command and args, and only from the variables
    # the container declares: it never sees the image's config.
    own = len(command) + len(args) if command else len(args)
    first = len(argv) - own
    return argv[:first] + [expand(arg, declared) for arg in argv[first:]]


def _environment(
    container: Mapping[str, Any], image: ImageConfigLike, hostname: str, field_path: str
) -> tuple[dict[str, str], dict[str, str]]:
    """The process environment, and the part of it the container itself declares."""
    env: dict[str, str] = {}
    for entry in image.env or ():
        name, sep, value = entry.partition("=")
        if sep and name:
            env[name] = value
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOSTNAME", hostname)
    # A value may refer to variables declared before it in the container's own list.
    declared: dict[str, str] = {}
    for index, entry in enumerate(container.get("env") or ()):
        where = f"{field_path}.env[{index}]"
        item = _mapping(entry, where)
        variable = item.get("name")
        if not isinstance(variable, str) or not variable or "=" in variable or "\0" in variable:
            raise SpecError(f"{where}.name", f"{variable!r} is not a valid variable name")
        raw = item.get("value")
        if raw is not None and not isinstance(raw, str):
            raise SpecError(f"{where}.value", f"{raw!r} is not a string")
        expanded = expand(raw or "", declared)
        declared[variable] = expanded
        env[variable] = expanded
    return env, declared


_REFERENCE = re.compile(r"\$(\$|\(([^)]*)\))")


def expand(text: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known names are replaced, `$$` is a literal `$`, and
    anything else (unknown names, an unclosed `$(`) stays as written."""

    def replace(match: re.Match[str]) -> str:
        if match.group(1) == "$":
            return "$"
        name = match.group(2)
        return variables.get(name, match.group(0))

    return _REFERENCE.sub(replace, text)


def _working_dir(container: Mapping[str, Any], image: ImageConfigLike, field_path: str) -> str:
    given = container.get("workingDir")
    if given:
        if not isinstance(given, str) or not given.startswith("/"):
            raise SpecError(f"{field_path}.workingDir", f"{given!r} is not an absolute path")
        return given
    from_image = image.working_dir or "/"
    # Docker accepts a relative WORKDIR in old images and reads it from the root.
    return from_image if from_image.startswith("/") else "/" + from_image


# The user


def _user(
    security: Mapping[str, Any],
    image: ImageConfigLike,
    rootfs: Path,
    field_path: str,
    user_namespace: bool,
) -> users.ProcessUser:
    try:
        user = users.resolve(security, image.user or "", rootfs, field_path)
    except users.UserError as exc:
        raise SpecError(exc.field, exc.problem) from None
    if not user_namespace:
        return user
    # The runtime could only fail to switch to an id the namespace does not map.
    unmapped = "is outside the Instance's user namespace (spec.hostUsers: false maps ids 0 to "
    unmapped += f"{USERNS_SIZE - 1})"
    if user.uid >= USERNS_SIZE:
        raise SpecError(user.uid_field, f"user id {user.uid} {unmapped}")
    if user.gid >= USERNS_SIZE:
        raise SpecError(user.gid_field, f"group id {user.gid} {unmapped}")
    for gid in user.additional_gids:
        if gid >= USERNS_SIZE:
            raise SpecError(
                f"{field_path}.image", f"supplementary group id {gid} of the image {unmapped}"
            )
    return user


# Limits


@functools.cache
def nofile_limit() -> int:
    """The open-files limit containers get: NOFILE_LIMIT, unless this process could not grant it.

    Raising a hard limit takes CAP_SYS_RESOURCE, which some sandboxes withhold even from root
    (the development VMs do); the runtime inherits the agent's limits, so asking for more than
    the agent's own hard limit would make every container fail to start.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or _has_capability(CAP_SYS_RESOURCE_BIT):
        return NOFILE_LIMIT
    return min(NOFILE_LIMIT, hard)


def _has_capability(bit: int) -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


# Capabilities


def _capabilities(security: Mapping[str, Any], privileged: bool, field: str) -> tuple[str, ...]:
    if privileged:
        return ALL_CAPABILITIES
    given = _mapping(security.get("capabilities"), field)
    drop = _capability_names(given.get("drop"), f"{field}.drop")
    add = _capability_names(given.get("add"), f"{field}.add")
    # Drop first, then add, so a capability both dropped and added is granted (containerd's order).
    kept = set() if "ALL" in drop else set(DEFAULT_CAPABILITIES) - drop
    granted = set(ALL_CAPABILITIES) if "ALL" in add else kept | add
    return tuple(c for c in ALL_CAPABILITIES if c in granted)


def _capability_names(value: Any, field: str) -> set[str]:
    names: set[str] = set()
    for index, raw in enumerate(_strings(value, field)):
        name = raw.strip().upper()
        if name == "ALL":
            names.add("ALL")
            continue
        full = name if name.startswith("CAP_") else f"CAP_{name}"
        if full not in ALL_CAPABILITIES:
            raise SpecError(
                f"{field}[{index}]", f"{raw!r} is not a Linux capability (e.g. NET_ADMIN)"
            )
        names.add(full)
    return names


# Resources


def _resources(container: Mapping[str, Any], privileged: bool, field_path: str) -> dict[str, Any]:
    where = f"{field_path}.resources"
    given = _mapping(container.get("resources"), where)
    limits = _mapping(given.get("limits"), f"{where}.limits")
    requests = _mapping(given.get("requests"), f"{where}.requests")

    def amount(resource: str, source: Mapping[str, Any], kind: str) -> int | None:
        if source.get(resource) is None:
            return None
        return _quantity(resource, source[resource], f"{where}.{kind}.{resource}")

    resources: dict[str, Any] = {
        # A device allowlist: runc adds the standard /dev nodes to an empty list.
        "devices": [{"allow": privileged, "access": "rwm"}],
    }
    memory = amount("memory", limits, "limits")
    if memory is not None:
        if memory <= 0:
            raise SpecError(f"{where}.limits.memory", "must be greater than zero")
        resources["memory"] = {"limit": memory}
    cpu: dict[str, Any] = {}
    cpu_limit = amount("cpu", limits, "limits")
    if cpu_limit:
        cpu["quota"] = max(MIN_CFS_QUOTA, cpu_limit * CFS_PERIOD // 1000)
        cpu["period"] = CFS_PERIOD
    cpu_request = amount("cpu", requests, "requests")
    if cpu_request is None:
        cpu_request = cpu_limit
    # No request at all is Kubernetes' best effort: the smallest share of a contended cpu.
    cpu["shares"] = min(MAX_SHARES, max(MIN_SHARES, (cpu_request or 0) * 1024 // 1000))
    resources["cpu"] = cpu
    pids = amount("pids", limits, "limits")
    if pids is not None and pids <= 0:
        raise SpecError(f"{where}.limits.pids", "must be greater than zero")
    resources["pids"] = {"limit": pids if pids is not None else DEFAULT_PIDS_LIMIT}
    return resources


def _quantity(resource: str, value: Any, field: str) -> int:
    try:
        return to_base_units(resource, value)
    except QuantityError as exc:
        shown = f'"{value}"' if isinstance(value, str) else repr(value)
        raise SpecError(field, f"{shown} is not a quantity ({exc.problem})") from None


def _cgroups_path(path: str) -> str:
    parts = PurePosixPath(path).parts
    if not path.startswith("/") or len(parts) < 2 or ".." in parts:
        raise SpecError("cgroupsPath", f"{path!r} must be an absolute path below the cgroup root")
    return path


# Mounts


def _mounts(privileged: bool, user_namespace: bool) -> list[dict[str, Any]]:
    ro = [] if privileged else ["ro"]
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
    ]
    if user_namespace:
        # sysfs belongs to the network namespace's owner, which is the host's user namespace
        # when the agent made the netns: a container root cannot mount it, only bind it. And
        # only recursively, as everything the namespace inherited is locked together; so the
        # host's mounts below /sys come along, and "rro" (runc 1.1+, mount_setattr) makes them
        # read-only too, where "ro" would cover /sys itself only. (/proc, /dev/pts, /dev/mqueue
        # and tmpfs are the namespace's own and mount as usual; runc binds the /dev nodes it
        # cannot create, and turns the cgroup mount into binds of the container's cgroups.)
        mounts.append(
            {
                "destination": "/sys",
                "type": "none",
                "source": "/sys",
                "options": ["rbind", "nosuid", "noexec", "nodev", *(["rro"] if ro else [])],
            }
        )
    else:
        mounts.append(
            {
                "destination": "/sys",
                "type": "sysfs",
                "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", *ro],
            }
        )
    mounts.append(
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", *ro],
        }
    )
    return mounts


# Input checking


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(field, f"expected an object, got {type(value).__name__}")
    return value


def _strings(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise SpecError(field, f"expected a list of strings, got {type(value).__name__}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise SpecError(f"{field}[{index}]", f"{item!r} is not a string")
    return list(value)
