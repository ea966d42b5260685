"""The built-in `busybox` image's root filesystem, made from Debian's busybox-static.

No registry is reachable from these machines, so the examples and tests need one image that
exists offline. Debian's busybox-static is a single static binary; around it this module lays out
a minimal root filesystem (every applet linked, /etc/passwd and /etc/group with root and nobody,
empty /etc/hosts, /etc/hostname and /etc/resolv.conf as bind-mount targets, fixed file times so
the layer's digest is the same on every node). A dynamically linked busybox would fail inside a
container with a confusing "not found", so it is refused up front.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

# The applets every example and test may rely on, whatever `busybox --list` says.
APPLETS = (
    "sh", "echo", "cat", "sleep", "ls", "httpd", "wget", "ps", "true", "false", "env", "id",
    "hostname", "nc",
)  # fmt: skip


def is_static_elf(path: Path) -> bool:
    """Whether `path` is an ELF executable without a program interpreter (PT_INTERP)."""
    with open(path, "rb") as elf:
        header = elf.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] not in (1, 2):
            return False
        order = "<" if header[5] == 1 else ">"
        if header[4] == 2:
            (table,) = struct.unpack_from(order + "Q", header, 32)
            entry_size, count = struct.unpack_from(order + "HH", header, 54)
        else:
            (table,) = struct.unpack_from(order + "I", header, 28)
            entry_size, count = struct.unpack_from(order + "HH", header, 42)
        elf.seek(table)
        headers = elf.read(entry_size * count)
    pt_interp = 3
    return all(
        struct.unpack_from(order + "I", headers, offset)[0] != pt_interp
        for offset in range(0, len(headers) - 3, entry_size or 1)
    )


def applets(busybox: Path) -> list[str]:
    """Every applet the binary offers (so `[`, `wget` or `nslookup` work as in Docker's image)."""
    try:
        listing = subprocess.run(
            [str(busybox), "--list"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        listing = []
    applets = {name for name in listing if "/" not in name and name not in (".", "..", "busybox")}
    return sorted(applets | set(APPLETS))


def lay_out(root: Path, busybox: Path) -> None:
    """A minimal root filesystem around the busybox binary, with fixed times for a stable digest."""
    for name, mode in (
        ("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("home", 0o755), ("proc", 0o555),
        ("root", 0o700), ("sys", 0o555), ("tmp", 0o1777), ("usr", 0o755), ("usr/bin", 0o755),
        ("var", 0o755),
    ):  # fmt: skip
        (root / name).mkdir()
        os.chmod(root / name, mode)
    shutil.copyfile(busybox, root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    for applet in applets(busybox):
        os.symlink("busybox", root / "bin" / applet)
    # Scripts start with `#!/usr/bin/env sh` as often as with `#!/bin/sh`.
    os.symlink("../../bin/busybox", root / "usr" / "bin" / "env")
    files = {
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
        "etc/group": "root:x:0:\nnobody:x:65534:\n",
        # The runtime bind-mounts these three; existing targets let that work on a read-only root.
        "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
        "etc/hostname": "",
        "etc/resolv.conf": "",
    }
    for name, content in files.items():
        (root / name).write_text(content)
        os.chmod(root / name, 0o644)
    stamp = busybox.stat().st_mtime_ns
    for current, dirnames, filenames in os.walk(root):
        for entry in (*dirnames, *filenames):
            os.utime(os.path.join(current, entry), ns=(stamp, stamp), follow_symlinks=False)
