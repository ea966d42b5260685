"""Container state records and restart rules, without containers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypermesh.runtime.containers import ContainerRecord, Exit, instance_phase

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def ran(record: ContainerRecord, seconds: float, exit: Exit) -> None:
    record.running(T0, "cid", "sha256:x")
    record.terminated(exit, T0 + timedelta(seconds=seconds))


def test_restart_policies() -> None:
    ok, failed = Exit(0), Exit(3)
    for policy, exit, restarts in [
        ("Always", ok, True), ("Always", failed, True),
        ("OnFailure", ok, False), ("OnFailure", failed, True),
        ("Never", ok, False), ("Never", failed, False),
    ]:
        record = ContainerRecord("main", "busybox")
        ran(record, 1, exit)
        assert record.should_restart(policy) is restarts, (policy, exit)  # type: ignore[arg-type]


def test_backoff_doubles_to_five_minutes_and_resets_after_a_long_run() -> None:
    record = ContainerRecord("main", "busybox")
    delays = []
    for _ in range(8):
        ran(record, 1, Exit(1))
        delays.append(record.schedule_restart(clock=0.0))
    assert delays == [0, 10, 20, 40, 80, 160, 300, 300]
    assert record.restart_count == 8
    status = record.status()
    assert status["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert "back-off 300s" in status["state"]["waiting"]["message"]
    assert status["lastState"]["terminated"]["exitCode"] == 1
    # Ten minutes of running wipes the slate.
    ran(record, 601, Exit(1))
    assert record.schedule_restart(clock=0.0) == 0


def test_oom_kill_is_reported_as_such() -> None:
    record = ContainerRecord("main", "busybox")
    ran(record, 2, Exit(137, signal=9, oom_killed=True))
    terminated = record.status()["state"]["terminated"]
    assert terminated == {
        "exitCode": 137, "reason": "OOMKilled", "signal": 9,
        "startedAt": "2026-11-27T12:00:00Z", "finishedAt": "2026-11-27T12:00:02Z", "containerID": "cid",
    }


def test_instance_phase() -> None:
    waiting = ContainerRecord("a", "busybox")
    assert instance_phase([waiting], "Always") == "Pending"
    running = ContainerRecord("b", "busybox")
    running.running(T0, "c", "d")
    assert instance_phase([waiting, running], "Always") == "Running"
    done = ContainerRecord("c", "busybox")
    ran(done, 1, Exit(0))
    assert instance_phase([done], "Never") == "Succeeded"
    assert instance_phase([done], "OnFailure") == "Succeeded"
    bad = ContainerRecord("d", "busybox")
    ran(bad, 1, Exit(2))
    assert instance_phase([done, bad], "Never") == "Failed"
    # Between restarts under Always, the Instance still counts as running.
    ran(waiting, 1, Exit(1))
    waiting.schedule_restart(clock=0.0)
    assert instance_phase([waiting], "Always") == "Running"
