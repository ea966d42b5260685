"""The remote command protocol's framing (channels, resize, close, exit status) and the agent's
parsing of an interactive exec request: what clients and servers put on the wire, checked as
bytes, plus property tests that what one side writes the other reads back."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypermesh.client import remotecommand as rc
from hypermesh.runtime import terminal


def test_channel_numbers_are_kubelets() -> None:
    assert (rc.STDIN, rc.STDOUT, rc.STDERR, rc.ERROR, rc.RESIZE, rc.CLOSE) == (0, 1, 2, 3, 4, 255)
    assert rc.SUBPROTOCOLS == ("v5.channel.k8s.io", "v4.channel.k8s.io")


def test_a_frame_is_the_channel_byte_then_the_data() -> None:
    assert rc.frame(rc.STDOUT, b"hello\n") == b"\x01hello\n"
    assert rc.frame(rc.STDIN) == b"\x00"
    assert rc.close_frame(rc.STDIN) == b"\xff\x00"
    assert rc.parse(b"\x02oops") == (2, b"oops")
    # The Python client sends str data as text frames: the channel is the first character.
    assert rc.parse("\x00ls\n") == (0, b"ls\n")
    with pytest.raises(rc.FramingError, match="no channel byte"):
        rc.parse(b"")
    with pytest.raises(rc.FramingError, match="not a byte"):
        rc.frame(256, b"")


@given(st.integers(0, 255), st.binary(max_size=4096))
def test_frames_round_trip(channel: int, data: bytes) -> None:
    assert rc.parse(rc.frame(channel, data)) == (channel, data)


def test_close_signals_name_one_channel() -> None:
    channel, data = rc.parse(rc.close_frame(rc.STDIN))
    assert (channel, rc.closed_channel(data)) == (rc.CLOSE, rc.STDIN)
    with pytest.raises(rc.FramingError, match="exactly one channel"):
        rc.closed_channel(b"")
    with pytest.raises(rc.FramingError, match="exactly one channel, got 2"):
        rc.closed_channel(b"\x00\x01")


def test_resize_messages_carry_width_and_height() -> None:
    message = rc.resize_frame(rc.TerminalSize(width=132, height=50))
    channel, data = rc.parse(message)
    assert channel == rc.RESIZE
    assert json.loads(data) == {"Width": 132, "Height": 50}
    assert rc.parse_resize(data) == rc.TerminalSize(132, 50)


@given(st.integers(1, rc.MAX_DIMENSION), st.integers(1, rc.MAX_DIMENSION))
def test_resize_round_trips(width: int, height: int) -> None:
    assert rc.parse_resize(rc.parse(rc.resize_frame(rc.TerminalSize(width, height)))[1]) == rc.TerminalSize(width, height)


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        (b"80x24", "must be JSON"),
        (b"[80, 24]", "must be a JSON object, got list"),
        (b'{"Width": 80}', "Height=None"),
        (b'{"Width": 0, "Height": 24}', "Width=0 must be a whole number from 1 to 65535"),
        (b'{"Width": 80, "Height": 70000}', "Height=70000"),
        (b'{"Width": "80", "Height": 24}', "Width='80'"),
        (b'{"Width": 80.5, "Height": 24}', "Width=80.5"),
        (b'{"Width": true, "Height": 24}', "Width=True"),
    ],
)
def test_bad_resizes_are_refused_with_the_reason(data: bytes, complaint: str) -> None:
    with pytest.raises(rc.FramingError, match=complaint.replace("[", r"\[").replace("(", r"\(")):
        rc.parse_resize(data)


def test_the_exit_status_is_what_kubelet_writes() -> None:
    assert rc.exit_status(0) == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    failed = rc.exit_status(3)
    assert failed["status"] == "Failure" and failed["reason"] == "NonZeroExitCode"
    assert failed["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}
    channel, data = rc.parse(rc.status_frame(failed))
    assert channel == rc.ERROR and orjson.loads(data) == failed


@given(st.integers(0, 255))
def test_exit_statuses_round_trip(code: int) -> None:
    assert rc.parse_status(orjson.dumps(rc.exit_status(code))) == rc.Outcome(code)


def test_other_failures_have_no_code_but_a_message() -> None:
    outcome = rc.parse_status(orjson.dumps(rc.failure_status("cannot run 'x' in container \"main\"")))
    assert outcome == rc.Outcome(None, "cannot run 'x' in container \"main\"")
    # A NonZeroExitCode whose cause is unreadable is still an error, not exit code 0.
    odd = {"status": "Failure", "reason": "NonZeroExitCode", "message": "m", "details": {"causes": [{"reason": "ExitCode", "message": "x"}]}}
    assert rc.parse_status(orjson.dumps(odd)) == rc.Outcome(None, "m")
    with pytest.raises(rc.FramingError, match="other than a JSON Status"):
        rc.parse_status(b"exit 3")
    with pytest.raises(rc.FramingError, match="not a Status object"):
        rc.parse_status(b"[1]")


def test_negotiation_prefers_v5_whatever_the_clients_order() -> None:
    assert rc.negotiate(["v4.channel.k8s.io", "v5.channel.k8s.io"]) == rc.V5
    assert rc.negotiate(["v4.channel.k8s.io"]) == rc.V4
    assert rc.negotiate(["channel.k8s.io", "base64.channel.k8s.io"]) is None
    with pytest.raises(terminal.SessionError, match=r"offered \(channel.k8s.io\) is supported: offer v5.channel.k8s.io or v4"):
        terminal.negotiate(["channel.k8s.io"])
    with pytest.raises(terminal.SessionError, match=r"offered \(none\)"):
        terminal.negotiate([])


def test_exec_options_follow_kubernetes_defaults() -> None:
    options = terminal.exec_options([("command", "sh"), ("command", "-c"), ("command", "echo hi")])
    assert options == terminal.ExecOptions(("sh", "-c", "echo hi"), stdin=False, stdout=True, stderr=True, tty=False)
    interactive = terminal.exec_options([("command", "sh"), ("stdin", "true"), ("tty", "1"), ("stderr", "true")])
    # With a terminal there is no separate stderr.
    assert (interactive.stdin, interactive.tty, interactive.stderr) == (True, True, False)


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ([("stdin", "true")], "exec needs a command"),
        ([("command", "sh"), ("tty", "yes")], "tty='yes' is not a boolean"),
        ([("command", "sh"), ("stdout", "false"), ("stderr", "false")], "at least 1 of stdin, stdout, stderr"),
    ],
)
def test_bad_exec_requests_say_what_to_change(query: list[tuple[str, str]], complaint: str) -> None:
    with pytest.raises(terminal.SessionError, match=complaint):
        terminal.exec_options(query)
