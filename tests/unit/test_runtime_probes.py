"""Container probes (threshold counting, startup gating, handlers) and log files, without runc."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hypermesh.runtime import logfiles, probes, runc
from hypermesh.runtime.containers import ContainerRecord, Exit
from hypermesh.runtime.probes import ContainerProbes, Outcome, ProbeSpec, Thresholds

# Probes in tests run every 10 ms instead of every 10 s.
FAST = 0.01


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


class Script:
    """A fake probe handler: answers from a list (the last answer repeats), logs its calls."""

    def __init__(self, name: str, answers: list[bool], calls: list[str], message: str = "") -> None:
        self.name, self.answers, self.calls, self.message = name, answers, calls, message

    async def __call__(self) -> Outcome:
        self.calls.append(self.name)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return Outcome(answer, "" if answer else self.message or f"{self.name} says no")

    def count(self) -> int:
        return self.calls.count(self.name)


def spec(kind: probes.ProbeKind, **overrides: float) -> ProbeSpec:
    settings = {"period": FAST, "timeout": 1.0, "failure_threshold": 3, "success_threshold": 1}
    settings.update(overrides)
    return ProbeSpec(
        kind=kind,
        action={},
        initial_delay=float(settings.pop("initial_delay", 0.0)),
        period=settings["period"],
        timeout=settings["timeout"],
        success_threshold=int(settings["success_threshold"]),
        failure_threshold=int(settings["failure_threshold"]),
    )


class Sink:
    """Collects what the probes report: Events, and how often they signalled a change."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.changes = 0

    async def event(self, type: str, reason: str, message: str) -> None:
        self.events.append((type, reason, message))

    def changed(self) -> None:
        self.changes += 1


def container_probes(handlers: dict[probes.ProbeKind, tuple[ProbeSpec, Script]], sink: Sink) -> ContainerProbes:
    return ContainerProbes(
        dict(handlers),
        started_at=time.monotonic(),
        on_change=sink.changed,
        on_event=sink.event,  # type: ignore[arg-type]
    )


# Counting


def test_readiness_starts_failing_and_flips_after_the_thresholds() -> None:
    counter = Thresholds(success=1, failure=3, initial=False)
    assert counter.observe(True) is True and counter.verdict is True
    assert [counter.observe(False) for _ in range(3)] == [False, False, True]
    assert counter.verdict is False
    # A pass in between starts the count of failures again.
    assert counter.observe(True) is True
    assert [counter.observe(ok) for ok in (False, False, True, False, False)] == [False, False, False, False, False]
    assert counter.verdict is True


def test_success_threshold_needs_consecutive_passes() -> None:
    counter = Thresholds(success=2, failure=1, initial=False)
    assert counter.observe(True) is False
    assert counter.observe(False) is False  # already failing: no change
    assert counter.observe(True) is False
    assert counter.observe(True) is True and counter.verdict is True


def test_startup_has_no_verdict_until_a_threshold_is_reached() -> None:
    counter = Thresholds(success=1, failure=2, initial=None)
    assert counter.observe(False) is False and counter.verdict is None
    assert counter.observe(False) is True and counter.verdict is False


def test_first_failure_marks_the_start_of_a_streak() -> None:
    counter = Thresholds(success=1, failure=3, initial=True)
    streaks = []
    for ok in (False, False, True, False, True, True, False):
        counter.observe(ok)
        streaks.append(counter.first_failure)
    assert streaks == [True, False, False, True, False, False, True]


def test_probe_specs_take_kubernetes_defaults() -> None:
    parsed = ProbeSpec.parse("liveness", {"exec": {"command": ["true"]}, "successThreshold": 5})
    assert (parsed.period, parsed.timeout, parsed.failure_threshold, parsed.initial_delay) == (10, 1, 3, 0)
    # Liveness and startup probes pass on one success, whatever the spec says.
    assert parsed.success_threshold == 1
    readiness = ProbeSpec.parse(
        "readiness",
        {"periodSeconds": 2, "timeoutSeconds": 4, "successThreshold": 2, "failureThreshold": 7, "initialDelaySeconds": 9},
    )
    assert (readiness.period, readiness.timeout, readiness.success_threshold) == (2, 4, 2)
    assert (readiness.failure_threshold, readiness.initial_delay) == (7, 9)


# Runners


async def test_startup_gates_liveness_and_readiness() -> None:
    calls: list[str] = []
    sink = Sink()
    startup = Script("startup", [False, False, True], calls)
    liveness = Script("liveness", [True], calls)
    readiness = Script("readiness", [True], calls)
    checks = container_probes(
        {
            "startup": (spec("startup", failure_threshold=5), startup),
            "liveness": (spec("liveness"), liveness),
            "readiness": (spec("readiness"), readiness),
        },
        sink,
    )
    assert not checks.started and not checks.ready
    checks.start()
    try:
        await until(lambda: checks.ready)
        # Nothing but the startup probe ran until it passed, and it stopped once it had.
        first_other = min(calls.index("liveness"), calls.index("readiness"))
        assert calls[:first_other] == ["startup"] * 3
        assert startup.count() == 3
        assert checks.started and checks.unhealthy is None
        await until(lambda: liveness.count() >= 3)
        assert startup.count() == 3
        # Two startup failures below the threshold: one Event for the streak, no kill.
        assert sink.events == [("Warning", "Unhealthy", "Startup probe failed: startup says no")]
    finally:
        await checks.stop()


async def test_a_failing_liveness_probe_makes_the_container_unhealthy_once() -> None:
    calls: list[str] = []
    sink = Sink()
    liveness = Script("liveness", [True, False], calls, message="HTTP probe failed with statuscode: 500")
    checks = container_probes({"liveness": (spec("liveness", failure_threshold=3), liveness)}, sink)
    # A container without a readiness probe is ready as soon as it runs.
    assert checks.started and checks.ready
    checks.start()
    try:
        await until(lambda: checks.unhealthy is not None)
        assert checks.unhealthy == "Liveness probe failed: HTTP probe failed with statuscode: 500"
        assert checks.failed == "liveness"
        assert liveness.count() == 4  # one pass, then three failures
        assert sink.changes == 1
        # Decided: the runner stops probing, and the failure streak made one Event.
        await asyncio.sleep(10 * FAST)
        assert liveness.count() == 4
        assert sink.events == [("Warning", "Unhealthy", checks.unhealthy)]
    finally:
        await checks.stop()


async def test_a_failing_startup_probe_never_lets_the_others_run() -> None:
    calls: list[str] = []
    sink = Sink()
    checks = container_probes(
        {
            "startup": (spec("startup", failure_threshold=2), Script("startup", [False], calls)),
            "readiness": (spec("readiness"), Script("readiness", [True], calls)),
        },
        sink,
    )
    checks.start()
    try:
        await until(lambda: checks.unhealthy is not None)
        assert checks.failed == "startup" and not checks.started and not checks.ready
        await asyncio.sleep(10 * FAST)
        assert calls == ["startup", "startup"]
    finally:
        await checks.stop()


async def test_readiness_follows_its_probe_with_one_event_per_failure_streak() -> None:
    calls: list[str] = []
    sink = Sink()
    answers = [False, True, True, False, False, True, True]
    checks = container_probes(
        {"readiness": (spec("readiness", failure_threshold=2), Script("readiness", answers, calls))}, sink
    )
    seen: list[bool] = []
    checks.on_change = lambda: seen.append(checks.ready)
    checks.start()
    try:
        await until(lambda: len(calls) >= 8)
        assert seen == [True, False, True]
        assert checks.ready and checks.unhealthy is None
        assert [event[2] for event in sink.events] == ["Readiness probe failed: readiness says no"] * 2
    finally:
        await checks.stop()


async def test_initial_delay_counts_from_the_start_of_the_container() -> None:
    calls: list[str] = []
    started = time.monotonic()
    checks = ContainerProbes(
        {"readiness": (spec("readiness", initial_delay=0.2), Script("readiness", [True], calls))},
        started_at=started,
        on_change=lambda: None,
        on_event=Sink().event,  # type: ignore[arg-type]
    )
    checks.start()
    try:
        await until(lambda: checks.ready)
        assert time.monotonic() - started >= 0.2
    finally:
        await checks.stop()


async def test_stopping_leaves_no_tasks_behind() -> None:
    before = asyncio.all_tasks()
    calls: list[str] = []
    checks = container_probes(
        {
            "startup": (spec("startup"), Script("startup", [False], calls)),
            "liveness": (spec("liveness"), Script("liveness", [True], calls)),
            "readiness": (spec("readiness", period=60), Script("readiness", [True], calls)),
        },
        Sink(),
    )
    checks.start()
    await asyncio.sleep(3 * FAST)
    await checks.stop()
    assert asyncio.all_tasks() == before


async def test_a_handler_that_hangs_or_raises_is_a_failure() -> None:
    async def hangs() -> Outcome:
        await asyncio.sleep(3600)
        return Outcome(True)

    async def raises() -> Outcome:
        raise RuntimeError("kaput")

    for handler, expected in ((raises, "probe errored: kaput"), (hangs, "probe did not finish within 0s")):
        sink = Sink()
        runner_spec = spec("liveness", failure_threshold=1, timeout=0.0)
        checks = ContainerProbes(
            {"liveness": (runner_spec, handler)},
            started_at=time.monotonic(),
            on_change=sink.changed,
            on_event=sink.event,  # type: ignore[arg-type]
        )
        # The hard limit is the probe's timeout plus slack; keep the test quick.
        probes._HARD_TIMEOUT_SLACK, saved = 0.05, probes._HARD_TIMEOUT_SLACK
        checks.start()
        try:
            await until(lambda c=checks: c.unhealthy is not None)  # type: ignore[misc]
            assert checks.unhealthy == f"Liveness probe failed: {expected}"
        finally:
            probes._HARD_TIMEOUT_SLACK = saved
            await checks.stop()


# Handlers


class FakeRuntime:
    def __init__(self, result: runc.ExecResult | Exception) -> None:
        self.result = result
        self.calls: list[tuple[str, list[str], float]] = []

    async def exec(self, container_id: str, argv: list[str], *, timeout: float) -> runc.ExecResult:
        self.calls.append((container_id, argv, timeout))
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def target(runtime: FakeRuntime | None = None, address: str = "127.0.0.1", ports: dict[str, int] | None = None) -> probes.Target:
    return probes.Target("hm-cid", address, ports or {}, runtime or FakeRuntime(runc.ExecResult(0, b"", b"")))


async def attempt(kind: probes.ProbeKind, probe: dict[str, object], where: probes.Target) -> Outcome:
    return await probes.handler_for(ProbeSpec.parse(kind, probe), where)()


async def test_exec_probes_pass_on_exit_zero_and_report_the_output_otherwise() -> None:
    runtime = FakeRuntime(runc.ExecResult(0, b"fine\n", b""))
    probe = {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "timeoutSeconds": 3}
    assert await attempt("readiness", probe, target(runtime)) == Outcome(True, "fine")
    assert runtime.calls == [("hm-cid", ["test", "-f", "/tmp/ready"], 3.0)]
    runtime.result = runc.ExecResult(1, b"", b"not there\n")
    assert await attempt("readiness", probe, target(runtime)) == Outcome(False, "not there")
    runtime.result = runc.ExecResult(1, b"", b"")
    assert (await attempt("readiness", probe, target(runtime))).message == "command 'test -f /tmp/ready' exited with 1"
    runtime.result = runc.ExecResult(-1, b"", b"", timed_out=True)
    assert "timed out after 3s" in (await attempt("readiness", probe, target(runtime))).message
    runtime.result = runc.CommandError(["runc", "exec"], 1, "container not running")
    assert "could not run" in (await attempt("readiness", probe, target(runtime))).message


async def test_tcp_probes_connect_to_the_instance_address() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        assert (await attempt("liveness", {"tcpSocket": {"port": "svc"}}, target(ports={"svc": port}))).ok
    finally:
        server.close()
        await server.wait_closed()
    refused = await attempt("liveness", {"tcpSocket": {"port": port}}, target())
    assert not refused.ok and refused.message == f"dial tcp 127.0.0.1:{port}: connect: connection refused"


async def test_http_probes_judge_the_status_code() -> None:
    status = {"code": 200}
    paths: list[str] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        paths.append(request.split()[1].decode())
        writer.write(f"HTTP/1.1 {status['code']} Whatever\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    where = target(ports={"http": port})
    try:
        for code, ok in ((200, True), (302, True), (404, False), (500, False)):
            status["code"] = code
            outcome = await attempt("liveness", {"httpGet": {"port": "http", "path": "/healthz"}}, where)
            assert outcome.ok is ok, code
        assert outcome.message == "HTTP probe failed with statuscode: 500"
        assert paths == ["/healthz"] * 4
    finally:
        server.close()
        await server.wait_closed()
    refused = await attempt("liveness", {"httpGet": {"port": port}}, where)
    assert refused.message == f'Get "http://127.0.0.1:{port}/": dial tcp 127.0.0.1:{port}: connect: connection refused'


async def test_probe_mistakes_fail_with_a_message_that_says_how_to_fix_them() -> None:
    where = target(ports={"http": 8080})
    unknown = await attempt("readiness", {"httpGet": {"port": "metrics"}}, where)
    assert unknown == Outcome(False, "port 'metrics' is not a named port of the container (named: http)")
    none = await attempt("readiness", {"periodSeconds": 3}, where)
    assert "sets no handler" in none.message and "exactly one of exec, tcpSocket or httpGet" in none.message
    two = await attempt("readiness", {"exec": {"command": ["true"]}, "tcpSocket": {"port": 1}}, where)
    assert "sets 2 handlers (exec, tcpSocket)" in two.message
    assert (await attempt("readiness", {"exec": {}}, where)).message == "the exec probe has no command"


def test_named_ports_come_from_the_container_spec() -> None:
    container = {"ports": [{"name": "http", "containerPort": 8080}, {"containerPort": 9090}]}
    assert probes.named_ports(container) == {"http": 8080}


# The container record


def test_a_killed_container_says_why_in_its_terminated_and_last_state() -> None:
    t0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    record = ContainerRecord("main", "busybox")
    record.running(t0, "cid", "sha256:x")
    assert record.status()["started"] is False  # until the probes say so
    record.started = record.ready = True
    record.killing("Liveness probe failed: HTTP probe failed with statuscode: 500")
    record.terminated(Exit(137, signal=9), t0 + timedelta(seconds=5))
    terminated = record.status()["state"]["terminated"]
    assert terminated["message"] == "Liveness probe failed: HTTP probe failed with statuscode: 500"
    assert (terminated["reason"], terminated["exitCode"]) == ("Error", 137)
    assert record.status()["ready"] is False and record.status()["started"] is False
    record.schedule_restart(0.0)
    assert record.status()["lastState"]["terminated"]["message"] == terminated["message"]
    # The next run starts with a clean slate.
    record.running(t0 + timedelta(seconds=6), "cid", "sha256:x")
    record.terminated(Exit(0), t0 + timedelta(seconds=7))
    assert "message" not in record.status()["state"]["terminated"]


# Log files


def test_rotation_copies_then_truncates_and_the_writer_carries_on(tmp_path: Path) -> None:
    path = logfiles.current_log(tmp_path, "stdout")
    # The shim's descriptor is opened in append mode, like this one.
    writer = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(writer, b"a" * 90 + b"\n" + b"b" * 20 + b"\n")
        assert logfiles.rotate(path, limit=200) is False
        assert logfiles.rotate(path, limit=100) is True
        assert logfiles.rotated_log(path).read_bytes() == b"a" * 90 + b"\n" + b"b" * 20 + b"\n"
        assert path.stat().st_size == 0
        os.write(writer, b"c\n")
        assert path.read_bytes() == b"c\n"  # no hole where the old bytes were
        # A second rotation replaces the first copy: one rotated file is kept.
        os.write(writer, b"d" * 200 + b"\n")
        assert logfiles.rotate_container(tmp_path, limit=100) == [path]
        assert logfiles.rotated_log(path).read_bytes() == b"c\n" + b"d" * 200 + b"\n"
        assert not list(tmp_path.glob("*.tmp"))
    finally:
        os.close(writer)
    assert logfiles.rotate(tmp_path / "missing.log", limit=0) is False


def test_the_previous_run_keeps_its_logs(tmp_path: Path) -> None:
    out, err = logfiles.current_log(tmp_path, "stdout"), logfiles.current_log(tmp_path, "stderr")
    out.write_bytes(b"first run\n")
    logfiles.rotated_log(out).write_bytes(b"first run, older\n")
    assert logfiles.keep_previous(tmp_path) is True
    assert not out.exists() and not err.exists()
    assert logfiles.tail(tmp_path, "stdout", 10, previous=True) == b"first run, older\nfirst run\n"
    assert logfiles.run_files(tmp_path, "stderr", previous=True) == []
    # A start that failed before writing anything keeps the crashed run's logs as the previous.
    out.touch()
    assert logfiles.keep_previous(tmp_path) is False
    assert logfiles.previous_log(tmp_path, "stdout").read_bytes() == b"first run\n"
    # The next run with output replaces them, stale rotated halves included.
    err.write_bytes(b"second run\n")
    assert logfiles.keep_previous(tmp_path) is True
    assert logfiles.previous_log(tmp_path, "stdout").read_bytes() == b""
    assert not logfiles.rotated_log(logfiles.previous_log(tmp_path, "stdout")).exists()
    assert logfiles.tail(tmp_path, "stderr", 10, previous=True) == b"second run\n"


@pytest.mark.parametrize("size", [0, 1, 5, 1000, 5000])
def test_tail_reads_the_last_lines_of_any_file(tmp_path: Path, size: int) -> None:
    path = tmp_path / "log"
    lines = [f"line {i} ".encode() + b"x" * (i % 97) + b"\n" for i in range(size)]
    path.write_bytes(b"".join(lines))
    for wanted in (0, 1, 3, 10, 4000, 6000):
        assert logfiles.tail_file(path, wanted) == (lines[-wanted:] if wanted else [])
    # A last line without its newline is still a line; a carriage return does not end one.
    path.write_bytes(b"one\ntwo\rstill two\nthree")
    assert logfiles.tail_file(path, 2) == [b"two\rstill two\n", b"three"]
    assert logfiles.tail_file(tmp_path / "missing", 5) == []


def test_tail_spans_the_rotated_file_and_joins_a_line_cut_by_rotation(tmp_path: Path) -> None:
    path = logfiles.current_log(tmp_path, "stderr")
    logfiles.rotated_log(path).write_bytes(b"one\ntwo\nthr")
    path.write_bytes(b"ee\nfour\n")
    assert logfiles.tail(tmp_path, "stderr", 2) == b"three\nfour\n"
    assert logfiles.tail(tmp_path, "stderr", 3) == b"two\nthree\nfour\n"
    assert logfiles.tail(tmp_path, "stderr", 100) == b"one\ntwo\nthree\nfour\n"
    assert logfiles.tail(tmp_path, "stdout", 5) == b""
