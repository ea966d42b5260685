"""The default seccomp filter of HyperMesh containers: a short denylist, not an allowlist.

Docker's and containerd's default profiles are allowlists of ~370 system calls with
`SCMP_ACT_ERRNO` for everything else. They are the stricter design, but an allowlist must follow
every new system call that libc, Go and Rust runtimes start to use (`clone3`, `faccessat2`,
`epoll_pwait2`, `rseq`, ...), and when it lags, working images fail with a bare EPERM in places
nobody thinks of looking. HyperMesh cannot ship profile updates in step with Docker, so its
default is `SCMP_ACT_ALLOW` and a list of the calls that matter:

- calls whose kernel state is not namespaced, so a container could reach the host through them
  even without privileges: keyrings (`keyctl`, `add_key`, `request_key`), `userfaultfd`,
  `io_uring_*` (the largest source of recent kernel exploits; Docker blocks it too), `bpf`,
  `perf_event_open`;
- namespace creation (`unshare`, `setns`, `clone` with a CLONE_NEW* flag): unprivileged user
  namespaces are how most container escapes reach kernel code that expects CAP_SYS_ADMIN;
  `clone3` answers ENOSYS because its flags live in memory a filter cannot read, and libcs
  then fall back to `clone`, whose flags it can;
- calls that capabilities already guard (mount, modules, reboot, clock, raw I/O ...), denied
  again as defence in depth, and allowed back when the container is given the capability, as
  Docker's profile does, so `capabilities.add: [SYS_ADMIN]` still means what users expect.

The trade-off: a dangerous system call added to a future kernel is allowed until it is listed
here. Most of them will need a capability the container does not have; the list is for those
that do not.
"""

from __future__ import annotations

import platform
from collections.abc import Collection
from typing import Any

__all__ = ["CLONE_NAMESPACE_FLAGS", "DENIED", "default_profile"]

EPERM = 1
ENOSYS = 38

# Each entry: the calls, and the capability that allows them back (None: never allowed back,
# short of turning the filter off for a privileged container).
DENIED: tuple[tuple[tuple[str, ...], str | None], ...] = (
    (("keyctl", "add_key", "request_key"), None),
    (("io_uring_setup", "io_uring_enter", "io_uring_register"), None),
    (("uselib", "vm86", "vm86old", "nfsservctl", "_sysctl", "sysfs", "ustat"), None),
    (("create_module", "get_kernel_syms", "query_module"), None),
    (("init_module", "finit_module", "delete_module"), "CAP_SYS_MODULE"),
    (("kexec_load", "kexec_file_load", "reboot"), "CAP_SYS_BOOT"),
    (("acct",), "CAP_SYS_PACCT"),
    (("iopl", "ioperm"), "CAP_SYS_RAWIO"),
    (("settimeofday", "stime", "clock_settime", "clock_settime64"), "CAP_SYS_TIME"),
    (("clock_adjtime", "clock_adjtime64"), "CAP_SYS_TIME"),
    (("syslog",), "CAP_SYSLOG"),
    (("vhangup",), "CAP_SYS_TTY_CONFIG"),
    (("open_by_handle_at",), "CAP_DAC_READ_SEARCH"),
    (("userfaultfd", "kcmp", "pidfd_getfd", "process_madvise"), "CAP_SYS_PTRACE"),
    (("mbind", "set_mempolicy", "migrate_pages", "move_pages"), "CAP_SYS_NICE"),
    (("bpf", "perf_event_open", "fanotify_init", "lookup_dcookie"), "CAP_SYS_ADMIN"),
    (("quotactl", "quotactl_fd", "swapon", "swapoff"), "CAP_SYS_ADMIN"),
    (("mount", "umount", "umount2", "pivot_root", "mount_setattr"), "CAP_SYS_ADMIN"),
    (("move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick"), "CAP_SYS_ADMIN"),
    (("unshare", "setns"), "CAP_SYS_ADMIN"),
)

# CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID,
# CLONE_NEWNET: any of them in `clone`'s flags (its first argument) is refused.
CLONE_NAMESPACE_FLAGS = (
    0x00020000,
    0x02000000,
    0x04000000,
    0x08000000,
    0x10000000,
    0x20000000,
    0x40000000,
)

# The filter must cover every ABI a process on this machine can call the kernel through, or a
# 32-bit call (int 0x80) would walk around a denylist.
_ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}


def default_profile(capabilities: Collection[str], *, machine: str | None = None) -> dict[str, Any]:
    """The `linux.seccomp` section for a container holding `capabilities` ("CAP_..." names)."""
    granted = set(capabilities)
    denied = sorted(
        name
        for names, capability in DENIED
        if capability is None or capability not in granted
        for name in names
    )
    syscalls: list[dict[str, Any]] = [
        {"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM}
    ]
    if "CAP_SYS_ADMIN" not in granted:
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
        # One rule per flag: rules for one call are alternatives, the arguments of a rule all
        # have to match, and "(flags & bit) == bit" is what a masked comparison can say.
        syscalls.extend(
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": EPERM,
                "args": [{"index": 0, "value": bit, "valueTwo": bit, "op": "SCMP_CMP_MASKED_EQ"}],
            }
            for bit in CLONE_NAMESPACE_FLAGS
        )
    profile: dict[str, Any] = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": syscalls}
    architectures = _ARCHITECTURES.get(machine or platform.machine())
    if architectures:
        profile["architectures"] = architectures
    return profile
