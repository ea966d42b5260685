"""Who a container's process runs as: `runAsUser`/`runAsGroup`, or the image's USER.

Kubernetes' rules, as containerd applies them: `runAsUser` replaces the image's USER entirely
(its group included: the group is the account's primary group in the image, else 0), and
`runAsGroup` replaces the group whichever way the user was chosen. Names in the image's USER
("app", "app:staff") are looked up in the image's own /etc/passwd and /etc/group, and the
account's memberships in /etc/group become the supplementary groups. `runAsNonRoot` refuses a
process that would end up as uid 0.

The image's files are read with symlinks resolved inside the image's root:
an image is untrusted, and its /etc/passwd may well be a link to the host's /etc/shadow.

Errors are `UserError`s naming the field to fix; `oci.runtime_spec` reports them as its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = ["MAX_ID", "ProcessUser", "UserError", "resolve"]

# The largest valid uid or gid: 2**32 - 1 is the kernel's "no id".
MAX_ID = 2**32 - 2


class UserError(ValueError):
    """A user or group that cannot be resolved; `field` says which part of the input is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


@dataclass(frozen=True)
class ProcessUser:
    """The ids a process runs with, and the fields they came from (for errors about them)."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    uid_field: str = ""
    gid_field: str = ""

    def to_oci(self) -> dict[str, Any]:
        """The OCI `process.user` object."""
        user: dict[str, Any] = {"uid": self.uid, "gid": self.gid}
        if self.additional_gids:
            user["additionalGids"] = list(self.additional_gids)
        return user


def resolve(
    security: Mapping[str, Any], image_user: str, rootfs: Path, field_path: str
) -> ProcessUser:
    """The user of the container at `field_path`, from its `securityContext` and the image's
    USER (`image_user`), names looked up in the image mounted at `rootfs`."""
    where = f"{field_path}.securityContext"
    run_as_user = _optional_id(security.get("runAsUser"), f"{where}.runAsUser")
    run_as_group = _optional_id(security.get("runAsGroup"), f"{where}.runAsGroup")
    passwd = _Passwd(rootfs)
    image_field = f"{field_path}.image"
    if run_as_user is not None:
        uid = run_as_user
        account = passwd.by_uid(uid)
        gid = account.gid if account is not None else 0
        uid_field = gid_field = f"{where}.runAsUser"
    else:
        uid, gid, account = _image_user(image_user, passwd, rootfs, image_field)
        uid_field = gid_field = image_field
    if run_as_group is not None:
        gid = run_as_group
        gid_field = f"{where}.runAsGroup"
    if security.get("runAsNonRoot") is True and uid == 0:
        raise UserError(
            f"{where}.runAsNonRoot",
            "the container would run as root (uid 0); set runAsUser or use an image with a "
            "non-root USER",
        )
    extra: tuple[int, ...] = ()
    if account is not None:
        extra = tuple(sorted(g for g in _member_groups(rootfs, account.name) if g != gid))
    return ProcessUser(uid, gid, extra, uid_field, gid_field)


@dataclass(frozen=True)
class _Account:
    name: str
    uid: int
    gid: int


def _image_user(
    text: str, passwd: _Passwd, rootfs: Path, field: str
) -> tuple[int, int, _Account | None]:
    name, _, group = text.partition(":")
    if not name:
        if group:
            raise UserError(field, f"the image's USER {text!r} names a group but no user")
        return 0, 0, passwd.by_uid(0)
    if name.isdigit():
        uid = int(name)
        account = passwd.by_uid(uid)
    else:
        account = passwd.by_name(name)
        if account is None:
            raise UserError(
                field,
                f"the image's USER {text!r}: there is no user {name!r} in the image's "
                f"/etc/passwd{passwd.why_missing()}",
            )
        uid = account.uid
    if not group:
        return uid, (account.gid if account is not None else 0), account
    if group.isdigit():
        return uid, int(group), account
    gid = _group_id(rootfs, group)
    if gid is None:
        raise UserError(
            field,
            f"the image's USER {text!r}: there is no group {group!r} in the image's /etc/group",
        )
    return uid, gid, account


class _Passwd:
    """The image's /etc/passwd, read once and only if a user has to be looked up."""

    def __init__(self, rootfs: Path) -> None:
        self._rootfs = rootfs
        self._accounts: list[_Account] | None = None
        self._missing = False

    def by_uid(self, uid: int) -> _Account | None:
        return next((a for a in self._entries() if a.uid == uid), None)

    def by_name(self, name: str) -> _Account | None:
        return next((a for a in self._entries() if a.name == name), None)

    def why_missing(self) -> str:
        return " (the image has no /etc/passwd)" if self._missing else ""

    def _entries(self) -> list[_Account]:
        if self._accounts is None:
            text = _read_in_root(self._rootfs, "/etc/passwd")
            self._missing = text is None
            self._accounts = list(_parse_accounts(text or ""))
        return self._accounts


def _parse_accounts(text: str) -> Iterator[_Account]:
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[2].isdigit() and fields[3].isdigit():
            yield _Account(fields[0], int(fields[2]), int(fields[3]))


def _group_entries(rootfs: Path) -> Iterator[tuple[str, int, list[str]]]:
    for line in (_read_in_root(rootfs, "/etc/group") or "").splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            members = fields[3].split(",") if len(fields) > 3 and fields[3] else []
            yield fields[0], int(fields[2]), members


def _group_id(rootfs: Path, name: str) -> int | None:
    return next((gid for group, gid, _ in _group_entries(rootfs) if group == name), None)


def _member_groups(rootfs: Path, user: str) -> set[int]:
    return {gid for _, gid, members in _group_entries(rootfs) if user in members}


def _read_in_root(rootfs: Path, path: str, *, limit: int = 1 << 20) -> str | None:
    """A file of the image, with symlinks resolved inside `rootfs`: an image's /etc/passwd that
    links to /etc/shadow must read the image's shadow, never the host's."""
    resolved = _resolve_in_root(rootfs, path)
    if resolved is None or not resolved.is_file():
        return None
    try:
        with resolved.open("rb") as handle:
            return handle.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def _resolve_in_root(rootfs: Path, path: str, *, max_links: int = 40) -> Path | None:
    pending = list(PurePosixPath(path).parts[1:])
    current: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            # ".." at the root stays at the root, as it does after chroot.
            if current:
                current.pop()
            continue
        candidate = rootfs.joinpath(*current, part)
        if candidate.is_symlink():
            links += 1
            if links > max_links:
                return None
            target = PurePosixPath(os.readlink(candidate))
            if target.is_absolute():
                current = []
                pending = list(target.parts[1:]) + pending
            else:
                pending = list(target.parts) + pending
            continue
        current.append(part)
    return rootfs.joinpath(*current)


def _optional_id(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ID:
        raise UserError(field, f"{value!r} is not a user or group id (0 to {MAX_ID})")
    return value
