"""The observed state of one container of an Instance, and the restart rules that drive it.

Kubernetes reports each container as exactly one of waiting (with a reason), running (since
when) or terminated (exit code, reason, times), plus the state before the last restart and a
restart count; users read crash loops and OOM kills from there. This module keeps that record
for one container and decides, from `restartPolicy` and the exit, whether and when it starts
again. It does no I/O, so the rules (backoff 10 s doubling to 5 min, reset after 10 minutes of
running; OnFailure restarts only on a non-zero exit; OOMKilled as the reason of a kill by the
memory limit) are testable on their own.

Probes feed in from outside: `started` and `ready` are whatever the supervisor's probes last
said (both false whenever the container is not running), and a container the agent killed for
failing its liveness or startup probe carries that explanation into its terminated state, where
users look for why a container restarted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

BACKOFF_BASE = 10.0
BACKOFF_CAP = 300.0
# A container that ran this long before exiting starts its backoff from the beginning again.
BACKOFF_RESET = 600.0

RestartPolicy = Literal["Always", "OnFailure", "Never"]


def rfc3339(moment: datetime) -> str:
    """Seconds-precision RFC 3339, as Kubernetes writes container times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Exit:
    """How a container ended."""

    code: int
    signal: int | None = None
    oom_killed: bool = False

    @property
    def reason(self) -> str:
        if self.oom_killed:
            return "OOMKilled"
        return "Completed" if self.code == 0 else "Error"


@dataclass
class ContainerRecord:
    """One container's state as reported in `status.containerStatuses`."""

    name: str
    image: str
    restart_count: int = 0
    # "waiting", "running" or "terminated"
    phase: str = "waiting"
    reason: str = "ContainerCreating"
    message: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit: Exit | None = None
    image_id: str = ""
    container_id: str = ""
    ready: bool = False
    # Whether the startup probe passed (true as soon as it runs when there is none).
    started: bool = False
    # Why the agent killed the running container, told in its terminated state once it ends.
    kill_message: str = ""
    # When the next start may happen (monotonic seconds), and consecutive quick crashes.
    not_before: float = 0.0
    crashes: int = 0
    last_state: dict[str, Any] = field(default_factory=dict)

    # Transitions

    def waiting(self, reason: str, message: str = "") -> None:
        self.phase, self.reason, self.message = "waiting", reason, message
        self.ready = self.started = False

    def running(self, now: datetime, container_id: str, image_id: str) -> None:
        """A new run began; it is neither started nor ready until the probes (if any) say so."""
        self.phase, self.reason, self.message = "running", "", ""
        self.started_at, self.finished_at, self.exit = now, None, None
        self.container_id, self.image_id = container_id, image_id
        self.ready = self.started = False
        self.kill_message = ""

    def killing(self, message: str) -> None:
        """The agent is killing the running container, for the reason in `message`."""
        self.kill_message = message

    def terminated(self, exit: Exit, now: datetime) -> None:
        self.phase, self.reason, self.message = "terminated", exit.reason, self.kill_message
        self.ready = self.started = False
        self.exit, self.finished_at, self.kill_message = exit, now, ""

    def should_restart(self, policy: RestartPolicy) -> bool:
        """Whether a terminated container starts again under `policy`."""
        if self.exit is None:
            return True
        if policy == "Always":
            return True
        if policy == "OnFailure":
            return self.exit.code != 0
        return False

    def schedule_restart(self, clock: float) -> float:
        """Move the terminated state to lastState and wait out the backoff; returns the delay."""
        ran_for = (
            (self.finished_at - self.started_at).total_seconds()
            if self.finished_at is not None and self.started_at is not None
            else 0.0
        )
        self.crashes = 1 if ran_for >= BACKOFF_RESET else self.crashes + 1
        # The first restart is immediate; repeated ones back off 10 s, 20 s, ... 5 min.
        delay = 0.0 if self.crashes <= 1 else min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (self.crashes - 2))
        self.last_state = {"terminated": self._terminated_state()}
        self.restart_count += 1
        self.not_before = clock + delay
        if delay > 0:
            self.waiting(
                "CrashLoopBackOff",
                f"back-off {delay:.0f}s restarting failed container={self.name}",
            )
        else:
            self.waiting("ContainerCreating")
        return delay

    # Reporting

    def status(self) -> dict[str, Any]:
        """The containerStatuses entry."""
        entry: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "ready": self.ready,
            "started": self.phase == "running" and self.started,
            "restartCount": self.restart_count,
            "state": self._state(),
        }
        if self.image_id:
            entry["imageID"] = self.image_id
        if self.container_id:
            entry["containerID"] = self.container_id
        if self.last_state:
            entry["lastState"] = self.last_state
        return entry

    def _state(self) -> dict[str, Any]:
        if self.phase == "running":
            return {"running": {"startedAt": rfc3339(self.started_at or datetime.now(UTC))}}
        if self.phase == "terminated":
            return {"terminated": self._terminated_state()}
        waiting: dict[str, Any] = {"reason": self.reason}
        if self.message:
            waiting["message"] = self.message
        return {"waiting": waiting}

    def _terminated_state(self) -> dict[str, Any]:
        exit = self.exit or Exit(code=0)
        state: dict[str, Any] = {"exitCode": exit.code, "reason": exit.reason}
        if exit.signal:
            state["signal"] = exit.signal
        if self.message:
            state["message"] = self.message
        if self.started_at is not None:
            state["startedAt"] = rfc3339(self.started_at)
        if self.finished_at is not None:
            state["finishedAt"] = rfc3339(self.finished_at)
        if self.container_id:
            state["containerID"] = self.container_id
        return state


def instance_phase(records: list[ContainerRecord], policy: RestartPolicy) -> str:
    """Pending, Running, Succeeded or Failed, by Kubernetes' rules for a pod's phase."""
    if not records:
        return "Pending"
    if any(r.phase == "running" for r in records):
        return "Running"
    finished = [r for r in records if r.phase == "terminated" and not r.should_restart(policy)]
    if len(finished) == len(records):
        return "Succeeded" if all(r.exit is not None and r.exit.code == 0 for r in finished) else "Failed"
    if any(r.restart_count > 0 for r in records):
        return "Running"  # between restarts: still running as far as the Instance goes
    return "Pending"
