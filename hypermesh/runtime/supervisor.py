"""One Instance on this node, from its first container start to the last cleanup.

A supervisor is a task per Instance bound to the node. It gives the Instance its network
namespace and address, starts each container (image -> overlay root filesystem -> OCI bundle ->
runc), watches them, restarts them as `restartPolicy` says with Kubernetes' backoff, reports
what it sees into `status` (phase, conditions, containerStatuses, instanceIP), and when the
Instance goes, stops the containers gracefully and removes everything it made: runc state,
cgroups, mounts, the network namespace and veth.

Stopping follows kubelet. Deleting a bound Instance only marks it (deletionTimestamp,
deletionGracePeriodSeconds; see hypermesh/api/graceful.py). The supervisor then sends each
running container SIGTERM (a Normal `Killing` Event, "Stopping container NAME"), and SIGKILL
to whatever still runs when the grace period is over. The period counts from when the agent saw
the deletion, not from the deletionTimestamp: an agent that was down or cut off must not kill
at once what it never had a chance to stop gently. A later, shorter grace period brings the
deadline forward, never back, and no period is shorter than kubelet's 2 s. Once everything has
stopped, the final container states (exit codes, reasons) and a terminal phase are written,
the node resources are released, and only then is the Instance deleted for good, with
`gracePeriodSeconds: 0` and its uid as a precondition. An Instance that disappears without
that (a forced delete, its node's Instances collected) is stopped and cleaned up the same way,
with nothing left to delete.

Blocking work (mounts, `ip`, writing bundles) runs in threads so one slow Instance never
stalls the others; the agent's event loop only schedules. Status is written only when it
changed, so a steady node writes nothing.

Adoption: a supervisor that finds its container already running (the agent restarted; runc
state and the shim survived) takes it over instead of starting a second copy; the exit status
of a container that ended while the agent was away is read from the shim's exit file.

Health: each run of a container gets its probes (`probes.ContainerProbes`), started with the run
and stopped when it ends or the Instance goes. The supervisor turns their conclusions into the
container's `started` and `ready`, and kills a container whose startup or liveness probe
failed (SIGKILL at once: probes in this schema have no grace period of their own, and a
graceful stop would hold up this Instance's loop); the restart rules then apply as to any exit,
and the terminated state says which probe failed. Probe failures become Warning `Unhealthy`
Events on the Instance, once per streak of failures.

Logs: before a container starts again its finished run's output becomes the `previous` files,
and from the poll loop, every few seconds, files that grew too large are rotated
(`logfiles`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from hypermesh.client.aio import AsyncClient
from hypermesh.client.errors import ApiError, ClientError
from hypermesh.client.kinds import INSTANCES
from hypermesh.operator import deletion
from hypermesh.operator.conditions import ConditionStatus, set_condition
from hypermesh.operator.events import EventRecorder
from hypermesh.runtime import idmap, images, logfiles, network, oci, probes, rootfs, runc, userns
from hypermesh.runtime.containers import (
    ContainerRecord,
    Exit,
    RestartPolicy,
    instance_phase,
    rfc3339,
)

log = logging.getLogger(__name__)

# How often a running Instance's containers are looked at (exit files are cheap to stat).
POLL_INTERVAL = 0.5
# After SIGKILL, how long to wait for the exit before deleting anyway.
KILL_WAIT = 5.0
# kubelet's floor on the time between SIGTERM and SIGKILL (minimumGracePeriodInSeconds).
MIN_GRACE = 2.0
# Kubernetes' default terminationGracePeriodSeconds.
DEFAULT_GRACE = 30.0
# Retries of the final DELETE while the API server cannot be reached: 1 s doubling to this.
FINISH_RETRY_CAP = 30.0
# How often the containers' log files are checked for rotation.
LOG_CHECK_INTERVAL = 5.0
# Concurrent container starts per CPU (see NodeServices.start_slots).
START_SLOTS_PER_CPU = 2
FIELD_MANAGER = "hypermesh-agent"


@dataclass
class NodeServices:
    """What every supervisor on this node shares."""

    client: AsyncClient
    node_name: str
    data_dir: Path
    images: images.ImageStore
    runtime: runc.OciRuntime
    network: network.NetworkManager
    host_ip: str
    # One recorder for the node, so repeated Events of any Instance fold into counts.
    events: EventRecorder = field(init=False)
    # The host id ranges of Instances with their own user namespace (spec.hostUsers: false).
    id_ranges: userns.RangePool = field(init=False)
    # Container starts in flight at once. A hundred at once (a Workload scaled up) spend the
    # CPU on each other: the first is Running only when nearly all are. A few at a time keep
    # the cores busy and let each finish in its own time.
    start_slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.events = EventRecorder(self.client, FIELD_MANAGER, host=self.node_name)
        self.id_ranges = userns.RangePool.for_data_dir(self.data_dir)
        self.start_slots = asyncio.Semaphore(START_SLOTS_PER_CPU * (os.cpu_count() or 1))


def grace_of(instance: dict[str, Any]) -> float:
    """Seconds from SIGTERM to SIGKILL: the deletion's grace period once the Instance is being
    deleted (a DELETE may have asked for less than the spec), else the spec's."""
    meta = instance.get("metadata") or {}
    value = meta.get("deletionGracePeriodSeconds") if meta.get("deletionTimestamp") else None
    if value is None:
        value = (instance.get("spec") or {}).get("terminationGracePeriodSeconds", DEFAULT_GRACE)
    try:
        return max(MIN_GRACE, float(value))
    except (TypeError, ValueError):
        return DEFAULT_GRACE


def container_id(uid: str, name: str) -> str:
    """The runc id of a container: unique per Instance and container, stable across restarts
    of the agent (adoption finds it by this name)."""
    return f"hm-{uid[:18]}-{name}"[:64]


class Supervisor:
    """Runs one Instance's containers until the Instance is deleted."""

    def __init__(self, services: NodeServices, instance: dict[str, Any]) -> None:
        self.services = services
        self.instance = instance
        meta = instance["metadata"]
        self.uid = str(meta["uid"])
        self.key = f"{meta.get('namespace')}/{meta['name']}"
        self.dir = services.data_dir / "instances" / self.uid
        spec = instance.get("spec") or {}
        self.policy: RestartPolicy = spec.get("restartPolicy") or "Always"
        previous = {c.get("name"): c for c in (instance.get("status") or {}).get("containerStatuses") or []}
        self.records = [
            ContainerRecord(
                name=c["name"],
                image=c.get("image", ""),
                restart_count=int((previous.get(c["name"]) or {}).get("restartCount") or 0),
            )
            for c in spec.get("containers") or []
        ]
        self.address: str | None = None
        # The Instance's host id range, when it has a user namespace of its own.
        self.ids: idmap.IdRange | None = None
        self.started: datetime | None = None
        # Set once the Instance is being deleted (or is gone): the loop ends and teardown runs.
        self.deleted = asyncio.Event()
        # The Instance no longer exists in the API: nothing to report, nothing to delete.
        self.gone = False
        # When the containers get SIGKILL (monotonic), once stopping has begun.
        self.deadline: float | None = None
        # Whether teardown has begun, and whether this run set up the Instance (and so has a
        # state worth reporting at the end).
        self._torn_down = False
        self._attached = False
        # The probes of each container's current run, by container name.
        self.health: dict[str, probes.ContainerProbes] = {}
        self._wake = asyncio.Event()
        self._reported: bytes = b""
        self._logs_due = 0.0
        self._task: asyncio.Task[None] | None = None

    # Driving

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"supervisor:{self.key}")

    def update(self, instance: dict[str, Any]) -> None:
        """A newer version of the Instance (status writes by others, labels...)."""
        self.instance = instance
        if instance["metadata"].get("deletionTimestamp"):
            self.terminate()

    def terminate(self) -> None:
        """The Instance is being deleted: stop its containers within its grace period, counted
        from now; a shorter period seen later brings the deadline forward, never back."""
        deadline = time.monotonic() + grace_of(self.instance)
        if self.deadline is None or deadline < self.deadline:
            self.deadline = deadline
        self.deleted.set()
        self._wake.set()
        if self._task is not None and self._task.done() and not self._torn_down:
            # The loop ended without stopping anything (it failed): stop and finish now, or
            # the Instance would stay Terminating for ever.
            self.start()

    def delete(self, last: dict[str, Any] | None = None) -> None:
        """The Instance is gone from the API (`last` is its final state, if known): stop and
        clean up all the same; there is nothing left to report or delete."""
        self.gone = True
        if last is not None:
            self.instance = last
        self.terminate()

    async def wait(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        try:
            # An Instance already terminating when first seen (the agent restarted) only stops.
            if not self.deleted.is_set():
                await self._attach()
            while not self.deleted.is_set():
                for index, record in enumerate(self.records):
                    await self._step(index, record)
                await self._report()
                if time.monotonic() >= self._logs_due:
                    self._logs_due = time.monotonic() + LOG_CHECK_INTERVAL
                    await asyncio.to_thread(self._rotate_logs)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("supervising %s failed", self.key)
        finally:
            # Whether the Instance goes or only the agent stops, no probe outlives this task.
            for checks in self.health.values():
                checks.cancel()
            await self._stop_probes()
            if self.deleted.is_set():
                await self._teardown()

    # Setup

    async def _attach(self) -> None:
        # The network is part of starting: it takes a slot like a container start does.
        async with self.services.start_slots:
            attachment = await asyncio.to_thread(self.services.network.attach, self.uid)
        self.address = str(attachment.address)
        self.netns = attachment.netns
        if (self.instance.get("spec") or {}).get("hostUsers") is False:
            # Before anything the range owns exists; the same range again after an agent restart.
            self.ids = await asyncio.to_thread(self.services.id_ranges.allocate, self.uid)
            await asyncio.to_thread(userns.configure_netns, self.netns)
        self.started = self.started or datetime.now(UTC)
        self._attached = True

    # One container, one step

    async def _step(self, index: int, record: ContainerRecord) -> None:
        container = (self.instance.get("spec") or {}).get("containers", [])[index]
        cid = container_id(self.uid, record.name)
        workdir = self.dir / record.name
        if record.phase == "running":
            exit = self.services.runtime.exit_status(workdir / "exit")
            if exit is None:
                await self._check_health(record, cid)
                return
            await self._stop_probes(record.name)
            record.terminated(Exit(exit.code, exit.signal, exit.oom_killed), datetime.now(UTC))
            if exit.error:
                record.message = exit.error[-500:]  # the runtime could not start it
            log.info("%s: container %s exited %s (%s)", self.key, record.name, exit.code, record.exit and record.exit.reason)
        if record.phase == "terminated":
            if not record.should_restart(self.policy):
                return
            await self._remove_container(cid, workdir)
            record.schedule_restart(time.monotonic())
        if record.phase == "waiting" and time.monotonic() >= record.not_before:
            await self._start_container(index, container, record, cid, workdir)

    async def _start_container(self, index: int, container: dict[str, Any], record: ContainerRecord, cid: str, workdir: Path) -> None:
        # Adopt a container that is still running from before an agent restart.
        state = await self.services.runtime.state(cid)
        if state is not None and state.status in ("running", "created"):
            if self.services.runtime.exit_status(workdir / "exit") is None:
                record.running(datetime.now(UTC), cid, record.image_id)
                self._watch(container, record, cid)
                return
        try:
            image = await asyncio.to_thread(self.services.images.resolve, record.image)
        except images.ImageNotFound as exc:
            record.waiting("ImageNotFound", str(exc))
            record.not_before = time.monotonic() + 10.0
            return
        except images.ImageError as exc:
            record.waiting("ImageInspectError", str(exc))
            record.not_before = time.monotonic() + 10.0
            return
        try:
            async with self.services.start_slots:
                bundle = await asyncio.to_thread(self._prepare_bundle, container, image, workdir, f"spec.containers[{index}]")
                await self.services.runtime.delete(cid)
                await self.services.runtime.run(
                    cid,
                    bundle,
                    stdout=logfiles.current_log(workdir, "stdout"),
                    stderr=logfiles.current_log(workdir, "stderr"),
                    exit_file=workdir / "exit",
                )
        except (oci.SpecError, ValueError) as exc:
            record.waiting("CreateContainerConfigError", str(exc))
            record.not_before = time.monotonic() + 10.0
            return
        except Exception as exc:  # noqa: BLE001 - any runtime failure is this container's, not the agent's
            log.warning("%s: starting %s failed: %s", self.key, record.name, exc)
            record.waiting("RunContainerError", str(exc)[-500:])
            record.crashes += 1
            record.not_before = time.monotonic() + 10.0
            return
        record.running(datetime.now(UTC), cid, image.digest)
        self._watch(container, record, cid)

    def _prepare_bundle(self, container: dict[str, Any], image: images.Image, workdir: Path, field_path: str) -> Path:
        """A fresh writable layer and config.json for one start of the container."""
        rootfs.unmount_rootfs(workdir)
        for stale in ("upper", "work", "exit"):
            path = workdir / stale
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        workdir.mkdir(parents=True, exist_ok=True)
        # The last run's output becomes `--previous`; the new shim starts fresh files.
        logfiles.keep_previous(workdir)
        root = rootfs.mount_rootfs(image, workdir, ids=self.ids)
        hostname = self._hostname()
        spec = oci.runtime_spec(
            container=container,
            image=image.config,
            rootfs=root,
            hostname=hostname,
            cgroups_path=f"/hypermesh/{self.uid}-{container['name']}",
            netns=self.netns,
            user_namespace=self.ids is not None,
            userns_base=self.ids.base if self.ids is not None else oci.DEFAULT_USERNS_BASE,
            field_path=field_path,
            extra_mounts=self._etc_files(hostname),
        )
        bundle = workdir / "bundle"
        bundle.mkdir(exist_ok=True)
        (bundle / "config.json").write_bytes(orjson.dumps(spec, option=orjson.OPT_INDENT_2))
        return bundle

    def _hostname(self) -> str:
        """`spec.hostname`, else the Instance's name, as a pod's hostname is its name."""
        spec = self.instance.get("spec") or {}
        return str(spec.get("hostname") or self.instance["metadata"]["name"])[:63]

    def _etc_files(self, hostname: str) -> list[dict[str, Any]]:
        """/etc/hostname and /etc/hosts for the Instance, shared by its containers and bind
        mounted over the image's, as kubelet does: software that reads them (busybox `hostname
        -i`, resolvers) sees the Instance's own name and address, not the image's."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "hostname").write_text(hostname + "\n")
        hosts = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        if self.address:
            hosts.append(f"{self.address}\t{hostname}")
        (self.dir / "hosts").write_text("\n".join(hosts) + "\n")
        return [
            {"destination": f"/etc/{name}", "type": "bind", "source": str(self.dir / name), "options": ["rbind", "rprivate", "rw"]}
            for name in ("hostname", "hosts")
        ]

    # Health

    def _watch(self, container: dict[str, Any], record: ContainerRecord, cid: str) -> None:
        """Start the probes of the run that just began (or was adopted)."""
        target = probes.Target(
            container_id=cid,
            address=self.address or "",
            ports=probes.named_ports(container),
            runtime=self.services.runtime,
        )
        checks = probes.for_container(
            container,
            target,
            # Adopted runs are probed as if they had just started: initial delays count again.
            started_at=time.monotonic(),
            on_change=self._wake.set,
            on_event=self._record_event,
        )
        self.health[record.name] = checks
        checks.start()
        # Without probes a running container is started and ready at once, as in Kubernetes.
        record.started, record.ready = checks.started, checks.ready

    async def _check_health(self, record: ContainerRecord, cid: str) -> None:
        """Copy the probes' conclusions into the record; kill the run if it is unhealthy."""
        checks = self.health.get(record.name)
        if checks is None:
            return
        record.started = checks.started
        # A container being killed serves nothing, whatever its readiness probe said last.
        record.ready = checks.ready and not record.kill_message
        if checks.unhealthy is None or record.kill_message:
            return
        record.killing(checks.unhealthy)
        record.ready = False
        # A SIGKILL exits with 137, which every policy but Never restarts.
        restarts = self.policy != "Never"
        log.info("%s: killing container %s: %s", self.key, record.name, checks.unhealthy)
        await self._record_event(
            "Normal",
            "Killing",
            f"Container {record.name} failed {checks.failed} probe"
            + (", will be restarted" if restarts else ""),
        )
        try:
            await self.services.runtime.kill(cid, signal.SIGKILL, all_processes=True)
        except Exception as exc:  # noqa: BLE001 - the exit (or its absence) is seen on the next poll
            log.warning("%s: killing %s failed: %s", self.key, record.name, exc)

    async def _stop_probes(self, name: str | None = None) -> None:
        """Stop the probes of one container (or of all), and wait until they are gone."""
        names = [name] if name is not None else list(self.health)
        for checks in [self.health.pop(n) for n in names if n in self.health]:
            await checks.stop()

    async def _record_event(self, type: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        # Informer items may lack kind and apiVersion; the Event's involvedObject needs both.
        subject = {"kind": INSTANCES.kind, "apiVersion": INSTANCES.api_version, "metadata": self.instance["metadata"]}
        await self.services.events.record(subject, reason, message, type)

    # Logs

    def _rotate_logs(self) -> None:
        for record in self.records:
            try:
                rotated = logfiles.rotate_container(self.dir / record.name)
            except OSError as exc:
                log.warning("%s: rotating the logs of %s failed: %s", self.key, record.name, exc)
                continue
            if rotated:
                log.info("%s: rotated %s", self.key, ", ".join(path.name for path in rotated))

    # Stopping

    async def _teardown(self) -> None:
        """Stop, report how the containers ended, release the node's resources, and then (if
        the Instance still exists) finish its deletion."""
        self._torn_down = True
        if self.deadline is None:
            self.deadline = time.monotonic() + grace_of(self.instance)
        stopped = await asyncio.gather(*(self._stop(record) for record in self.records))
        # An Instance this run never set up (the agent restarted) has nothing new to say
        # unless one of its containers was still running and has now ended.
        if not self.gone and (self._attached or any(stopped)):
            await self._report(final=True)
        try:
            for record in self.records:
                await self._remove_container(container_id(self.uid, record.name), self.dir / record.name)
            await asyncio.to_thread(self.services.network.detach, self.uid)
            await asyncio.to_thread(shutil.rmtree, self.dir, True)
            # Last: nothing the range owned (processes, files) is left to meet its next holder.
            await asyncio.to_thread(self.services.id_ranges.release, [self.uid])
            log.info("%s: stopped and cleaned up", self.key)
        except Exception:
            # Nothing runs any more; leftovers are removed at the agent's next start (orphans).
            log.exception("%s: stopped, but the cleanup is incomplete", self.key)
        if not self.gone:
            await self._finish()

    async def _stop(self, record: ContainerRecord) -> bool:
        """SIGTERM, SIGKILL at the deadline; the exit goes into the record. True if the
        container was running."""
        cid = container_id(self.uid, record.name)
        workdir = self.dir / record.name
        runtime = self.services.runtime
        state = await runtime.state(cid)
        was_running = state is not None and state.status == "running"
        if was_running:
            await self._record_event("Normal", "Killing", f"Stopping container {record.name}")
            with contextlib.suppress(Exception):
                await runtime.kill(cid, signal.SIGTERM)
            if not await self._exited(workdir):
                log.info("%s: container %s still running after its grace period: SIGKILL", self.key, record.name)
                with contextlib.suppress(Exception):
                    await runtime.kill(cid, signal.SIGKILL, all_processes=True)
                await self._exited(workdir, time.monotonic() + KILL_WAIT)
        if was_running or record.phase == "running":
            exit = runtime.exit_status(workdir / "exit")
            if exit is not None:
                record.terminated(Exit(exit.code, exit.signal, exit.oom_killed), datetime.now(UTC))
        return was_running

    async def _exited(self, workdir: Path, until: float | None = None) -> bool:
        """Wait for the exit file until `until` (default: the stop deadline, which a shorter
        grace period may bring forward while this waits)."""
        while True:
            if self.services.runtime.exit_status(workdir / "exit") is not None:
                return True
            deadline = until if until is not None else self.deadline
            if deadline is None or time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)

    async def _finish(self) -> None:
        """Delete the Instance for good now that nothing of it runs; retried while the API
        server cannot be reached (the agent stopping cancels this)."""
        delay = 1.0
        while not self.gone:
            try:
                if await deletion.delete_now(self.services.client, INSTANCES, self.instance):
                    log.info("%s: deleted", self.key)
                return
            except (ApiError, ClientError) as exc:
                log.warning("%s: deletion not finished (%s); retrying in %.0fs", self.key, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, FINISH_RETRY_CAP)

    async def _remove_container(self, cid: str, workdir: Path) -> None:
        await self.services.runtime.delete(cid)
        await asyncio.to_thread(rootfs.unmount_rootfs, workdir)

    # Reporting

    async def _report(self, *, final: bool = False) -> None:
        """Write status if it changed. `final`: the containers were stopped for a deletion,
        so the phase is terminal (Succeeded if every container exited 0), as kubelet reports
        a deleted pod's."""
        phase = instance_phase(self.records, self.policy)
        if final:
            succeeded = all(r.phase == "terminated" and r.exit is not None and r.exit.code == 0 for r in self.records)
            phase = "Succeeded" if succeeded and self.records else "Failed"
        ready = phase == "Running" and all(r.ready and r.phase == "running" for r in self.records)
        conditions = (self.instance.get("status") or {}).get("conditions")
        now = rfc3339(datetime.now(UTC))
        conditions = set_condition(conditions, "Initialized", "True", "NetworkReady", "", now=now)
        containers_ready: ConditionStatus = "True" if ready else "False"
        unready = [r for r in self.records if not (r.ready and r.phase == "running")]
        why = "" if ready else ", ".join(f"{r.name}: {_unready(r)}" for r in unready)
        conditions = set_condition(conditions, "ContainersReady", containers_ready, "ContainersReady" if ready else "ContainersNotReady", why, now=now)
        conditions = set_condition(conditions, "Ready", containers_ready, "ContainersReady" if ready else "ContainersNotReady", why, now=now)
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": [r.status() for r in self.records],
            "hostIP": self.services.host_ip,
        }
        if self.address:
            status["instanceIP"] = self.address
        if self.started is not None:
            status["startTime"] = rfc3339(self.started)
        # Conditions carry times; compare without them so an unchanged state writes nothing.
        fingerprint = orjson.dumps(_without_times(status), option=orjson.OPT_SORT_KEYS)
        if fingerprint == self._reported:
            return
        meta = self.instance["metadata"]
        try:
            self.instance = await self.services.client.update_status(
                INSTANCES, meta["name"], meta.get("namespace"), status, field_manager=FIELD_MANAGER
            )
            self._reported = fingerprint
        except ApiError as exc:
            if exc.status == 404:
                self.delete()  # only the status is lost: the loop (or teardown) goes on
            else:
                log.warning("%s: status not written: %s", self.key, exc)
        except ClientError as exc:
            log.warning("%s: status not written: %s", self.key, exc)


def _unready(record: ContainerRecord) -> str:
    """Why a container is not ready, in a word or three for the Ready condition's message."""
    if record.phase != "running":
        return record.reason or record.phase
    if record.kill_message:
        return "Unhealthy"
    return "StartupProbeNotPassed" if not record.started else "ReadinessProbeNotPassed"


def _without_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if k not in ("lastTransitionTime", "lastHeartbeatTime")}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value
