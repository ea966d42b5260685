"""Bootstrap tokens: the short-lived shared secret a new node joins with, in kubeadm's format.

A token is `<id>.<secret>`: a 6-character id (public: it names the token, and it appears in
user names, logs and the audit log) and a 16-character secret (which must never be logged), both
`[a-z0-9]`. It is stored, as in Kubernetes, in a core v1 Secret `bootstrap-token-<id>` in
`kube-system` of type `bootstrap.kubernetes.io/token`, whose data says what the token may do
(`usage-bootstrap-authentication: "true"`), until when (`expiration`, RFC 3339) and which extra
groups its holder gets (`auth-extra-groups`, each `system:bootstrappers:...`). The API server
authenticates a bearer token that matches such a Secret as `system:bootstrap:<id>` in the group
`system:bootstrappers`; Secrets are encrypted at rest, so the secret half is never on disk in the
clear.

This module is the format only (generating, parsing, the Secret's shape, expiry and a
constant-time comparison), shared by the `hypermesh token` commands, the API server's
authenticator and the joining agent. `BootstrapToken`'s repr hides the secret, so a token that
ends up in a log line or a traceback by accident shows only its id.
"""

from __future__ import annotations

import base64
import datetime
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

SECRET_TYPE = "bootstrap.kubernetes.io/token"
NAMESPACE = "kube-system"
SECRET_PREFIX = "bootstrap-token-"
USER_PREFIX = "system:bootstrap:"
GROUP = "system:bootstrappers"
# Extra groups must stay inside the bootstrappers' namespace of groups, or a token could make
# its holder `system:masters`.
EXTRA_GROUP = re.compile(r"^system:bootstrappers:[a-z0-9:-]{0,255}[a-z0-9]$")
DEFAULT_TTL = datetime.timedelta(hours=24)

_ID = re.compile(r"^[a-z0-9]{6}$")
_SECRET = re.compile(r"^[a-z0-9]{16}$")
_TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"


class TokenFormatError(ValueError):
    """Text that is not a bootstrap token; the message never repeats the text (it may be one)."""


@dataclass(frozen=True)
class BootstrapToken:
    """One token: `id` names it, `secret` proves it."""

    id: str
    secret: str = field(repr=False)

    @classmethod
    def generate(cls) -> BootstrapToken:
        """A fresh random token (about 83 bits in the secret, as kubeadm's)."""
        return cls(_random(6), _random(16))

    @classmethod
    def parse(cls, text: str) -> BootstrapToken:
        """`<id>.<secret>`; TokenFormatError otherwise."""
        match = _TOKEN.match(text.strip())
        if match is None:
            raise TokenFormatError(
                "a bootstrap token is <id>.<secret>: 6 then 16 characters of [a-z0-9] separated "
                "by a dot, as `hypermesh token create` prints it"
            )
        return cls(match.group(1), match.group(2))

    def __str__(self) -> str:
        return f"{self.id}.{self.secret}"

    @property
    def user(self) -> str:
        """The user name its holder is authenticated as."""
        return USER_PREFIX + self.id

    @property
    def secret_name(self) -> str:
        """The name of the Secret that stores it."""
        return SECRET_PREFIX + self.id


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def format_time(moment: datetime.datetime) -> str:
    """RFC 3339 in UTC with a `Z`, as Kubernetes writes `expiration`."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime.datetime:
    """An RFC 3339 time (`Z` or an offset); ValueError names the text."""
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time such as 2030-01-02T03:04:05Z") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (end it with Z)")
    return moment


def secret_manifest(
    token: BootstrapToken,
    *,
    expires: datetime.datetime | None,
    description: str = "",
    extra_groups: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The core v1 Secret that makes `token` valid for node bootstrap (authentication only)."""
    for group in extra_groups:
        if not EXTRA_GROUP.match(group):
            raise ValueError(f"extra group {group!r} must match {EXTRA_GROUP.pattern}")
    data = {"token-id": token.id, "token-secret": token.secret, "usage-bootstrap-authentication": "true"}
    if expires is not None:
        data["expiration"] = format_time(expires)
    if description:
        data["description"] = description
    if extra_groups:
        data["auth-extra-groups"] = ",".join(extra_groups)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": token.secret_name, "namespace": NAMESPACE},
        "type": SECRET_TYPE,
        "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
    }


@dataclass(frozen=True)
class StoredToken:
    """What a bootstrap token Secret says, checked once when it is read.

    `problem` is why the Secret cannot authenticate anyone whatever the time (malformed, not
    for authentication, being deleted), or empty."""

    id: str
    secret: bytes = field(repr=False)
    expires: datetime.datetime | None
    groups: tuple[str, ...]
    description: str = ""
    usages: tuple[str, ...] = ()
    problem: str = ""

    def expired(self, now: datetime.datetime) -> bool:
        return self.expires is not None and now >= self.expires

    def accepts(self, secret: str, now: datetime.datetime) -> bool:
        """Whether `secret` proves this token now (compared in constant time)."""
        # The comparison runs even for an unusable token, so timing does not tell them apart.
        same = hmac.compare_digest(self.secret, secret.encode())
        return same and not self.problem and not self.expired(now)


def _field(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        return ""
    try:
        return base64.b64decode(value, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return ""


def from_secret(secret: dict[str, Any]) -> StoredToken | None:
    """The token a Secret stores; None when it is no bootstrap token Secret at all.

    A Secret of the right name and type that is wrong inside (an id that does not match its
    name, a bad expiration, an extra group outside `system:bootstrappers:`) yields a token with
    a `problem`, as Kubernetes refuses such tokens rather than guessing."""
    meta = secret.get("metadata") or {}
    name = str(meta.get("name") or "")
    if meta.get("namespace") != NAMESPACE or not name.startswith(SECRET_PREFIX) or secret.get("type") != SECRET_TYPE:
        return None
    token_id = name[len(SECRET_PREFIX):]
    data = secret.get("data") or {}
    if not isinstance(data, dict):
        data = {}
    given_id, token_secret = _field(data, "token-id"), _field(data, "token-secret")
    problems = []
    if not _ID.match(token_id) or given_id != token_id:
        problems.append(f"token-id {given_id!r} does not match the Secret's name")
    if not _SECRET.match(token_secret):
        problems.append("token-secret is not 16 characters of [a-z0-9]")
    usages = tuple(key[len("usage-bootstrap-"):] for key in sorted(data) if key.startswith("usage-bootstrap-") and _field(data, key) == "true")
    if "authentication" not in usages:
        problems.append('usage-bootstrap-authentication is not "true"')
    expires = None
    if _field(data, "expiration"):
        try:
            expires = parse_time(_field(data, "expiration"))
        except ValueError as exc:
            problems.append(f"expiration: {exc}")
    groups = [GROUP]
    for group in filter(None, (g.strip() for g in _field(data, "auth-extra-groups").split(","))):
        if EXTRA_GROUP.match(group):
            groups.append(group)
        else:
            problems.append(f"auth-extra-groups: {group!r} is not a system:bootstrappers: group")
    if meta.get("deletionTimestamp"):
        problems.append("the Secret is being deleted")
    return StoredToken(
        id=token_id,
        secret=token_secret.encode(),
        expires=expires,
        groups=tuple(dict.fromkeys(groups)),
        description=_field(data, "description"),
        usages=usages,
        problem="; ".join(problems),
    )
