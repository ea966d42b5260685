"""Kubernetes' remote command protocol over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`).

Interactive exec multiplexes a command's streams over one WebSocket: every binary message starts
with a channel byte and the rest is that channel's data. The numbers are kubelet's, so the
official clients (client-go's WebSocket executor, the Python client's `stream()`) work unchanged:

    0 stdin     client -> server   bytes for the command's input
    1 stdout    server -> client   the command's output (with a terminal: everything it writes)
    2 stderr    server -> client   the command's error output (never with a terminal)
    3 error     server -> client   one JSON `metav1.Status` when the command has ended
    4 resize    client -> server   JSON `{"Width": w, "Height": h}`, the terminal's new size
    255 close   client -> server   v5 only: `[255, channel]`, the client has no more data for it

v4 has no close signal, so a v4 client cannot end the command's input short of hanging up;
that is why v5 is preferred when a client offers both.

The status on channel 3 is what kubelet writes: `Success`, or `Failure` with reason
`NonZeroExitCode` and the code as the message of a cause of type `ExitCode` (clients parse it
from there), or `Failure` with another reason for a command that could not run at all.

This module is the wire format only, without I/O, so the agent, the API server's relay and the
CLI share it and its tests need no sockets. Text messages are accepted as their UTF-8 bytes:
the Python client sends `str` data as text frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

STDIN: Final = 0
STDOUT: Final = 1
STDERR: Final = 2
ERROR: Final = 3
RESIZE: Final = 4
CLOSE: Final = 255

V5: Final = "v5.channel.k8s.io"
V4: Final = "v4.channel.k8s.io"
# Most preferred first.
SUBPROTOCOLS: Final = (V5, V4)

# A terminal dimension is an unsigned short in the kernel's `struct winsize`.
MAX_DIMENSION = 0xFFFF
# Kubelet's names for a command that ended with a code other than 0.
NON_ZERO_EXIT_CODE = "NonZeroExitCode"
EXIT_CODE_CAUSE = "ExitCode"


class FramingError(ValueError):
    """A message that does not follow the protocol; the text says what was wrong."""


@dataclass(frozen=True)
class TerminalSize:
    """A terminal's size in character cells."""

    width: int
    height: int


def negotiate(offered: list[str] | tuple[str, ...]) -> str | None:
    """The subprotocol to answer a client offering `offered`: ours in our order of preference
    (not the client's: a client offering v4 first still gets the v5 close signal), or None."""
    for protocol in SUBPROTOCOLS:
        if protocol in offered:
            return protocol
    return None


def frame(channel: int, data: bytes = b"") -> bytes:
    """One message: the channel byte, then the data."""
    if not 0 <= channel <= 255:
        raise FramingError(f"channel {channel} is not a byte (0-255)")
    return bytes((channel,)) + data


def close_frame(channel: int) -> bytes:
    """The v5 signal that the sender has no more data for `channel`."""
    return frame(CLOSE, bytes((channel,)))


def parse(message: bytes | str) -> tuple[int, bytes]:
    """A received message as (channel, data)."""
    data = message.encode() if isinstance(message, str) else bytes(message)
    if not data:
        raise FramingError("an empty message has no channel byte")
    return data[0], data[1:]


def closed_channel(data: bytes) -> int:
    """The channel a close signal (the data of a channel-255 message) names."""
    if len(data) != 1:
        raise FramingError(f"a close signal names exactly one channel, got {len(data)} bytes")
    return data[0]


def resize_frame(size: TerminalSize) -> bytes:
    """A resize message for `size`."""
    return frame(RESIZE, orjson.dumps({"Width": size.width, "Height": size.height}))


def parse_resize(data: bytes) -> TerminalSize:
    """The size a resize message carries; both dimensions must be 1-65535."""
    try:
        value: Any = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise FramingError(f"a resize message must be JSON {{\"Width\": w, \"Height\": h}}: {exc}") from None
    if not isinstance(value, dict):
        raise FramingError(f"a resize message must be a JSON object, got {type(value).__name__}")
    dimensions = []
    for key in ("Width", "Height"):
        number = value.get(key)
        if type(number) is not int or not 0 < number <= MAX_DIMENSION:
            raise FramingError(f"resize {key}={number!r} must be a whole number from 1 to {MAX_DIMENSION}")
        dimensions.append(number)
    return TerminalSize(*dimensions)


# -- the status on channel 3 -----------------------------------------------------------------


def exit_status(code: int) -> dict[str, Any]:
    """The Status kubelet writes when the command has ended with `code`."""
    if code == 0:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {code}",
        "reason": NON_ZERO_EXIT_CODE,
        "details": {"causes": [{"reason": EXIT_CODE_CAUSE, "message": str(code)}]},
    }


def failure_status(message: str, *, reason: str = "InternalError", code: int = 500) -> dict[str, Any]:
    """The Status for a session that ended without an exit code (could not start, broke off)."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def status_frame(status: dict[str, Any]) -> bytes:
    """The channel-3 message carrying `status`."""
    return frame(ERROR, orjson.dumps(status))


@dataclass(frozen=True)
class Outcome:
    """What a channel-3 status says: the exit code, or why there is none (`error`)."""

    exit_code: int | None
    error: str = ""


def parse_status(data: bytes) -> Outcome:
    """Read the channel-3 status as clients do: Success is 0, NonZeroExitCode carries the code
    in its ExitCode cause, anything else is an error without a code."""
    try:
        status: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise FramingError(f"the error channel carried something other than a JSON Status: {data[:120]!r}") from None
    if not isinstance(status, dict):
        raise FramingError(f"the error channel carried JSON that is not a Status object: {data[:120]!r}")
    if status.get("status") == "Success":
        return Outcome(0)
    message = str(status.get("message") or "the command failed without saying why")
    if status.get("reason") == NON_ZERO_EXIT_CODE:
        for cause in (status.get("details") or {}).get("causes") or []:
            if isinstance(cause, dict) and cause.get("reason") == EXIT_CODE_CAUSE:
                try:
                    return Outcome(int(cause.get("message", "")))
                except ValueError:
                    break
    return Outcome(None, message)
