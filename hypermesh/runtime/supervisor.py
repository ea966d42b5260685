"""One Instance on this node, from its first container start to the last cleanup.

A supervisor is a task per Instance bound to the node. It gives the Instance its network
namespace and address, starts each container (image -> overlay root filesystem -> OCI bundle ->
runc), watches them, restarts them as `restartPolicy` says with Kubernetes' backoff, reports
what it sees into `status` (phase, conditions, containerStatuses, instanceIP), and when the
Instance goes, stops the containers gracefully (SIGTERM, then SIGKILL after
`terminationGracePeriodSeconds`) and removes everything it made: runc state, cgroups, mounts,
the network namespace and veth.

Blocking work (mounts, `ip`, writing bundles) runs in threads so one slow Instance never
stalls the others; the agent's event loop only schedules. Status is written only when it
changed, so a steady node writes nothing.

Adoption: a supervisor that finds its container already running (the agent restarted; runc
state and the shim survived) takes it over instead of starting a second copy; the exit status
of a container that ended while the agent was away is read from the shim's exit file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from hypermesh.client.aio import AsyncClient
from hypermesh.client.errors import ApiError, ClientError
from hypermesh.client.kinds import INSTANCES
from hypermesh.operator.conditions import ConditionStatus, set_condition
from hypermesh.runtime import images, network, oci, rootfs, runc
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
        self.started: datetime | None = None
        self.deleted = asyncio.Event()
        self._wake = asyncio.Event()
        self._reported: bytes = b""
        self._task: asyncio.Task[None] | None = None

    # Driving

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"supervisor:{self.key}")

    def update(self, instance: dict[str, Any]) -> None:
        """A newer version of the Instance (status writes by others, labels...)."""
        self.instance = instance
        if instance["metadata"].get("deletionTimestamp"):
            self.delete()

    def delete(self) -> None:
        """The Instance is gone (or going): stop and clean up."""
        self.deleted.set()
        self._wake.set()

    async def wait(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        try:
            await self._attach()
            while not self.deleted.is_set():
                for index, record in enumerate(self.records):
                    await self._step(index, record)
                await self._report()
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("supervising %s failed", self.key)
        finally:
            if self.deleted.is_set():
                await self._teardown()

    # Setup

    async def _attach(self) -> None:
        attachment = await asyncio.to_thread(self.services.network.attach, self.uid)
        self.address = str(attachment.address)
        self.netns = attachment.netns
        self.started = self.started or datetime.now(UTC)

    # One container, one step

    async def _step(self, index: int, record: ContainerRecord) -> None:
        container = (self.instance.get("spec") or {}).get("containers", [])[index]
        cid = container_id(self.uid, record.name)
        workdir = self.dir / record.name
        if record.phase == "running":
            exit = self.services.runtime.exit_status(workdir / "exit")
            if exit is None:
                return
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
                record.ready = True
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
            bundle = await asyncio.to_thread(self._prepare_bundle, container, image, workdir, f"spec.containers[{index}]")
            await self.services.runtime.delete(cid)
            await self.services.runtime.run(
                cid, bundle, stdout=workdir / "stdout.log", stderr=workdir / "stderr.log", exit_file=workdir / "exit"
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
        # Without a readiness probe a running container is ready, as in Kubernetes.
        record.ready = True

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
        root = rootfs.mount_rootfs(image, workdir)
        spec = oci.runtime_spec(
            container=container,
            image=image.config,
            rootfs=root,
            hostname=str(self.instance["metadata"]["name"])[:63],
            cgroups_path=f"/hypermesh/{self.uid}-{container['name']}",
            netns=self.netns,
            field_path=field_path,
        )
        bundle = workdir / "bundle"
        bundle.mkdir(exist_ok=True)
        (bundle / "config.json").write_bytes(orjson.dumps(spec, option=orjson.OPT_INDENT_2))
        return bundle

    # Stopping

    async def _teardown(self) -> None:
        grace = float((self.instance.get("spec") or {}).get("terminationGracePeriodSeconds", 30))
        await asyncio.gather(*(self._stop(record, grace) for record in self.records))
        await asyncio.to_thread(self.services.network.detach, self.uid)
        await asyncio.to_thread(shutil.rmtree, self.dir, True)
        log.info("%s: stopped and cleaned up", self.key)

    async def _stop(self, record: ContainerRecord, grace: float) -> None:
        cid = container_id(self.uid, record.name)
        workdir = self.dir / record.name
        runtime = self.services.runtime
        state = await runtime.state(cid)
        if state is not None and state.status == "running":
            with contextlib.suppress(Exception):
                await runtime.kill(cid, signal.SIGTERM)
            if not await self._exited(workdir, grace):
                with contextlib.suppress(Exception):
                    await runtime.kill(cid, signal.SIGKILL, all_processes=True)
                await self._exited(workdir, KILL_WAIT)
        await self._remove_container(cid, workdir)

    async def _exited(self, workdir: Path, within: float) -> bool:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.services.runtime.exit_status(workdir / "exit") is not None:
                return True
            await asyncio.sleep(0.1)
        return False

    async def _remove_container(self, cid: str, workdir: Path) -> None:
        await self.services.runtime.delete(cid)
        await asyncio.to_thread(rootfs.unmount_rootfs, workdir)

    # Reporting

    async def _report(self) -> None:
        phase = instance_phase(self.records, self.policy)
        ready = phase == "Running" and all(r.ready and r.phase == "running" for r in self.records)
        conditions = (self.instance.get("status") or {}).get("conditions")
        now = rfc3339(datetime.now(UTC))
        conditions = set_condition(conditions, "Initialized", "True", "NetworkReady", "", now=now)
        containers_ready: ConditionStatus = "True" if ready else "False"
        waiting = [r for r in self.records if r.phase != "running"]
        why = "" if ready else ", ".join(f"{r.name}: {r.reason or r.phase}" for r in waiting)
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
                self.delete()
            else:
                log.warning("%s: status not written: %s", self.key, exc)
        except ClientError as exc:
            log.warning("%s: status not written: %s", self.key, exc)


def _without_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if k not in ("lastTransitionTime", "lastHeartbeatTime")}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value
