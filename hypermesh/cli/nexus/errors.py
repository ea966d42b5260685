"""What nexus prints when something fails, and which exit code goes with it.

kubectl users read errors by their shape, so the shapes are kubectl's:
`Error from server (NotFound): workloads.hypermesh.io "x" not found` for a failure Status,
`error: ...` for everything decided on this side. Exit codes: 0 ok, 1 an error from the server
or bad input, 2 a usage mistake (argparse's own convention). The client library's exception
classes are matched by name so this module never imports the client.
"""

from __future__ import annotations

from typing import Any

USAGE = 2
FAILURE = 1

KUBECONFIG_HINT = (
    "hint: point nexus at a cluster with --kubeconfig FILE or the KUBECONFIG variable "
    "(`hypermesh up` prints the path of the admin kubeconfig it writes)"
)


class CliError(Exception):
    """A failure decided by nexus itself; `str()` is the message without the `error: ` prefix."""

    def __init__(self, message: str, *, code: int = FAILURE) -> None:
        super().__init__(message)
        self.code = code


class UsageError(CliError):
    """The command line itself is wrong (exit code 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code=USAGE)


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def server_error_line(exc: Any) -> str:
    """`Error from server (Reason): message` for an ApiError."""
    reason = getattr(exc, "reason", "") or "Unknown"
    return f"Error from server ({reason}): {exc}"


def describe(exc: BaseException) -> tuple[str, int]:
    """The text to print on stderr for `exc`, and the exit code."""
    names = _class_names(exc)
    if "ApiError" in names:
        text = server_error_line(exc)
        details = conflict_details(getattr(exc, "status_body", None))
        if details:
            text += "\n" + details
        return text, FAILURE
    if "ConfigError" in names:
        message = str(exc)
        # The client's messages usually say what to do already; add the hint only when not.
        if not any(word in message.lower() for word in ("hint", "--kubeconfig", "kubeconfig=")):
            message += "\n" + KUBECONFIG_HINT
        return f"error: {message}", FAILURE
    if isinstance(exc, CliError):
        return f"error: {exc}", exc.code
    if "UnknownResource" in names or "ClientError" in names or "ManifestError" in names or "OutputError" in names:
        return f"error: {exc}", FAILURE
    return f"error: {type(exc).__name__}: {exc}", FAILURE


def conflict_details(status: Any) -> str:
    """For an apply conflict: which manager owns which field, and how to take it over."""
    if not isinstance(status, dict) or status.get("reason") != "Conflict":
        return ""
    causes = (status.get("details") or {}).get("causes") or []
    lines = []
    for cause in causes:
        # Kubernetes spells the cause's kind `reason`; accept `type` too.
        if not isinstance(cause, dict) or "FieldManagerConflict" not in (cause.get("reason"), cause.get("type")):
            continue
        message = str(cause.get("message", ""))
        manager = message.removeprefix("conflict with ").strip() or "another manager"
        lines.append(f"  - {cause.get('field', '')} is owned by {manager}")
    if not lines:
        return ""
    return (
        "Apply conflicts with other field managers:\n" + "\n".join(lines) + "\n"
        "Please review the fields above; they currently have other managers. Rerun with "
        "--force-conflicts to take ownership of them, or leave them out of your manifest."
    )
