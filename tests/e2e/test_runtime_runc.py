"""Real containers through hypermesh.runtime.runc: exit codes, OOM kills, limits, exec, cleanup.

Each test builds its own root filesystem from the host's static busybox (no image store), writes
a bundle with `oci.runtime_spec` and drives the runtime `OciRuntime.detect` picks. Waiting is
always for an observable event with a generous deadline; no test asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from hypermesh.runtime import oci, runc

BUSYBOX = Path("/bin/busybox")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="running containers needs root"),
    pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed (make setup)"),
    pytest.mark.skipif(not BUSYBOX.exists(), reason="no static /bin/busybox (busybox-static)"),
]


@dataclass(frozen=True)
class Image:
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ("sh",)
    env: tuple[str, ...] = ("PATH=/bin",)
    working_dir: str = "/"
    user: str = ""


@dataclass
class Started:
    """One container a test started, and where its files are."""

    id: str
    bundle: Path
    rootfs: Path
    stdout: Path
    stderr: Path
    exit_file: Path
    cgroups_path: str
    pid: int = 0


def make_rootfs(path: Path) -> Path:
    """A root filesystem of busybox and its applets, with a passwd naming one user."""
    (path / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, path / "bin" / "busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        if applet != "busybox":
            (path / "bin" / applet).symlink_to("busybox")
    for directory in ("etc", "tmp", "proc", "sys", "dev"):
        (path / directory).mkdir(exist_ok=True)
    (path / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n"
    )
    (path / "etc" / "group").write_text("root:x:0:\napp:x:1000:\n")
    return path


class Lab:
    """Builds bundles and starts containers for one test; deletes them all afterwards."""

    def __init__(self, tmp: Path, runtime: runc.OciRuntime) -> None:
        self.tmp = tmp
        self.runtime = runtime
        self.started: list[Started] = []

    def bundle(self, command: list[str], **options: Any) -> Started:
        cid = f"hmtest-{uuid.uuid4().hex[:12]}"
        base = self.tmp / cid
        rootfs = make_rootfs(base / "rootfs")
        container: dict[str, Any] = {"name": "main", "image": "busybox", "command": command}
        for key in ("resources", "securityContext", "env"):
            if key in options:
                container[key] = options.pop(key)
        cgroups_path = f"/hypermesh/{cid}"
        spec = oci.runtime_spec(
            container=container,
            image=Image(),
            rootfs=rootfs,
            hostname="lab",
            cgroups_path=cgroups_path,
            netns=options.pop("netns", None),
            **options,
        )
        (base / "bundle").mkdir()
        (base / "bundle" / "config.json").write_bytes(orjson.dumps(spec))
        return Started(
            cid,
            base / "bundle",
            rootfs,
            base / "stdout",
            base / "stderr",
            base / "exit",
            cgroups_path,
        )

    async def run(self, command: list[str], **options: Any) -> Started:
        started = self.bundle(command, **options)
        self.started.append(started)
        started.pid = await self.runtime.run(
            started.id,
            started.bundle,
            stdout=started.stdout,
            stderr=started.stderr,
            exit_file=started.exit_file,
        )
        return started

    async def exit(
        self, started: Started, runtime: runc.OciRuntime | None = None
    ) -> runc.ExitStatus:
        """The container's exit, waiting for it as long as the test's own timeout allows."""
        runtime = runtime or self.runtime
        while (status := runtime.exit_status(started.exit_file)) is None:
            await asyncio.sleep(0.02)
        return status

    async def close(self) -> None:
        for started in self.started:
            await self.runtime.delete(started.id)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    runtime = await asyncio.to_thread(runc.OciRuntime.detect, tmp_path / "oci")
    lab = Lab(tmp_path, runtime)
    try:
        yield lab
    finally:
        await lab.close()


def cgroup_dirs(cgroups_path: str) -> list[Path]:
    return [
        hierarchy / cgroups_path.lstrip("/")
        for hierarchy in Path("/sys/fs/cgroup").iterdir()
        if (hierarchy / cgroups_path.lstrip("/")).exists()
    ]


# Exits


async def test_echo_writes_stdout_and_exits_zero(lab: Lab) -> None:
    started = await lab.run(["echo", "hello"])
    assert started.pid > 0
    status = await lab.exit(started)
    assert status == runc.ExitStatus(code=0, signal=None, oom_killed=False)
    assert started.stdout.read_text() == "hello\n"
    assert started.stderr.read_text() == ""


async def test_exit_code_and_stderr_are_the_containers(lab: Lab) -> None:
    started = await lab.run(["sh", "-c", "echo oops >&2; exit 3"])
    status = await lab.exit(started)
    assert (status.code, status.signal, status.oom_killed) == (3, None, False)
    assert started.stderr.read_text() == "oops\n"


async def test_env_user_and_cwd_reach_the_process(lab: Lab) -> None:
    started = await lab.run(
        ["sh", "-c", 'echo "$GREETING $(id -u):$(id -g) $(pwd) $HOSTNAME"'],
        env=[{"name": "GREETING", "value": "hi"}],
        securityContext={"runAsUser": 1000},
    )
    await lab.exit(started)
    assert started.stdout.read_text() == "hi 1000:1000 / lab\n"


async def test_start_failure_raises_and_keeps_runc_out_of_the_logs(lab: Lab) -> None:
    started = lab.bundle(["/no/such/program"])
    started.stderr.write_text("earlier run\n")
    with pytest.raises(runc.StartError, match="no/such/program"):
        await lab.runtime.run(
            started.id,
            started.bundle,
            stdout=started.stdout,
            stderr=started.stderr,
            exit_file=started.exit_file,
        )
    assert started.stderr.read_text() == "earlier run\n"
    assert await lab.runtime.state(started.id) is None
    assert cgroup_dirs(started.cgroups_path) == []
    assert started.id not in lab.runtime.list()


# Limits


async def test_memory_limit_kills_and_reports_oom(lab: Lab) -> None:
    # dd's 64 MiB buffer is written by the kernel page by page, past the 16 MiB limit.
    started = await lab.run(
        ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        resources={"limits": {"memory": "16Mi"}},
    )
    status = await lab.exit(started)
    assert status.oom_killed
    assert (status.code, status.signal) == (137, signal.SIGKILL)


async def test_kill_is_not_an_oom(lab: Lab) -> None:
    started = await lab.run(["sleep", "100"], resources={"limits": {"memory": "64Mi"}})
    await lab.runtime.kill(started.id, signal.SIGKILL)
    status = await lab.exit(started)
    assert (status.code, status.signal, status.oom_killed) == (137, signal.SIGKILL, False)


async def test_pids_limit_stops_forks(lab: Lab) -> None:
    script = "i=0; while [ $i -lt 20 ]; do sleep 30 & i=$((i+1)); done; echo all started"
    started = await lab.run(["sh", "-c", script], resources={"limits": {"pids": "8"}})
    status = await lab.exit(started)
    assert status.code != 0
    assert "can't fork" in started.stderr.read_text()
    assert "all started" not in started.stdout.read_text()


async def test_cpu_and_memory_limits_land_in_the_cgroup(lab: Lab) -> None:
    started = await lab.run(
        ["sleep", "100"],
        resources={"limits": {"cpu": "250m", "memory": "32Mi"}, "requests": {"cpu": "100m"}},
    )
    relative = started.cgroups_path.lstrip("/")
    memory = Path("/sys/fs/cgroup/memory") / relative / "memory.limit_in_bytes"
    cpu = Path("/sys/fs/cgroup/cpu") / relative
    if not memory.exists() or not cpu.exists():
        pytest.skip("this host has no cgroup v1 memory and cpu hierarchies")
    assert int(memory.read_text()) == 32 << 20
    assert int((cpu / "cpu.cfs_quota_us").read_text()) == 25_000
    assert int((cpu / "cpu.shares").read_text()) == 102


# Signals, exec, state


async def test_sigterm_ends_a_container_that_handles_it(lab: Lab) -> None:
    # An init only dies of the signals it handles (it is PID 1 of its namespace), so this one
    # handles SIGTERM the way shells report it: exit 128+15.
    started = await lab.run(["sh", "-c", "trap 'exit 143' TERM; sleep 100 & wait $!"])
    await wait_for_state(lab.runtime, started.id, "running")
    await lab.runtime.kill(started.id, signal.SIGTERM)
    status = await lab.exit(started)
    assert (status.code, status.signal, status.oom_killed) == (143, signal.SIGTERM, False)


async def test_kill_all_reaches_every_process(lab: Lab) -> None:
    started = await lab.run(["sh", "-c", "sleep 100 & sleep 100 & wait"])
    await lab.runtime.kill(started.id, signal.SIGKILL, all_processes=True)
    status = await lab.exit(started)
    assert status.signal == signal.SIGKILL


async def test_exec_runs_inside_the_container(lab: Lab) -> None:
    started = await lab.run(["sleep", "100"], env=[{"name": "FROM_SPEC", "value": "spec"}])
    result = await lab.runtime.exec(
        started.id,
        ["sh", "-c", 'echo "$FROM_SPEC $EXTRA $(hostname)"; echo err >&2; exit 4'],
        timeout=30,
        env=["EXTRA=extra"],
    )
    assert result == runc.ExecResult(4, b"spec extra lab\n", b"err\n", timed_out=False)
    # The exec'd process sees the container's pid namespace, where the init is pid 1.
    ps = await lab.runtime.exec(started.id, ["cat", "/proc/1/cmdline"], timeout=30)
    assert ps.stdout == b"sleep\x00100\x00"


async def test_exec_timeout_kills_the_command(lab: Lab) -> None:
    started = await lab.run(["sleep", "100"])
    result = await lab.runtime.exec(started.id, ["sleep", "50"], timeout=0.5)
    assert result.timed_out
    # Nothing of the timed-out command is left running in the container.
    listing = "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done"
    left = await lab.runtime.exec(started.id, ["sh", "-c", listing], timeout=30)
    commands = [line.strip() for line in left.stdout.decode().splitlines()]
    assert "sleep 100" in commands
    assert "sleep 50" not in commands


async def test_exec_of_a_missing_program_raises(lab: Lab) -> None:
    started = await lab.run(["sleep", "100"])
    with pytest.raises(runc.CommandError):
        await lab.runtime.exec(started.id, ["/no/such/program"], timeout=30)


async def test_state_follows_the_lifecycle(lab: Lab) -> None:
    started = lab.bundle(["sleep", "100"])
    assert await lab.runtime.state(started.id) is None
    lab.started.append(started)
    started.pid = await lab.runtime.run(
        started.id,
        started.bundle,
        stdout=started.stdout,
        stderr=started.stderr,
        exit_file=started.exit_file,
    )
    state = await lab.runtime.state(started.id)
    assert state is not None
    assert (state.status, state.pid, state.bundle) == ("running", started.pid, started.bundle)
    await lab.runtime.kill(started.id, signal.SIGKILL)
    await lab.exit(started)
    # The shim runs runc with --keep: the stopped container stays until delete().
    stopped = await lab.runtime.state(started.id)
    assert stopped is not None and stopped.status == "stopped"
    await lab.runtime.delete(started.id)
    assert await lab.runtime.state(started.id) is None


async def test_delete_removes_state_and_cgroups(lab: Lab) -> None:
    started = await lab.run(["sleep", "100"], resources={"limits": {"memory": "32Mi"}})
    assert cgroup_dirs(started.cgroups_path) != []
    # Deleting a running container kills it; the shim still records the exit.
    await lab.runtime.delete(started.id)
    assert cgroup_dirs(started.cgroups_path) == []
    assert not (lab.runtime.root / started.id).exists()
    assert started.id not in lab.runtime.list()
    assert lab.runtime.exit_status(started.exit_file) is not None
    await lab.runtime.delete(started.id)  # a second time is harmless
    await lab.runtime.kill(started.id)  # and so is killing what is gone


async def test_delete_cleans_cgroups_runc_left_behind(lab: Lab) -> None:
    started = await lab.run(["true"])
    await lab.exit(started)
    # A leftover the way an interrupted delete leaves it: runc's state gone, the cgroup not.
    await lab.runtime._command("delete", "--force", started.id)
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        if (hierarchy / "cgroup.procs").exists() or (hierarchy / "tasks").exists():
            (hierarchy / started.cgroups_path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    assert cgroup_dirs(started.cgroups_path) != []
    await lab.runtime.delete(started.id)
    assert cgroup_dirs(started.cgroups_path) == []


# Surviving the agent


async def test_a_new_runtime_adopts_running_containers(lab: Lab, tmp_path: Path) -> None:
    started = await lab.run(["sh", "-c", "while [ ! -e /tmp/stop ]; do sleep 0.05; done; exit 7"])
    shim = shim_of(started.id)
    # The shim is in a session of its own and no child of this process: an agent that exits
    # (or is killed with its whole process group) leaves it running.
    assert os.getsid(shim) != os.getsid(0)
    assert parent_of(shim) != os.getpid()
    restarted = await asyncio.to_thread(runc.OciRuntime.detect, tmp_path / "oci")
    assert started.id in restarted.list()
    state = await restarted.state(started.id)
    assert state is not None and (state.status, state.pid) == ("running", started.pid)
    assert restarted.exit_status(started.exit_file) is None
    (started.rootfs / "tmp" / "stop").touch()
    status = await lab.exit(started, restarted)
    assert (status.code, status.signal, status.oom_killed) == (7, None, False)


# Isolation


async def test_default_hardening(lab: Lab) -> None:
    started = await lab.run(
        [
            "sh",
            "-c",
            "grep CapEff /proc/self/status; grep NoNewPrivs /proc/self/status; "
            "wc -c < /proc/timer_list; unshare -U true || echo unshare refused; "
            "echo 1 > /proc/sys/kernel/panic || echo proc/sys read-only",
        ]
    )
    await lab.exit(started)
    if not Path("/proc/timer_list").exists():
        pytest.skip("this kernel has no /proc/timer_list to mask")
    lines = started.stdout.read_text().split("\n")
    # Docker's default set: chown dac_override fowner fsetid kill setgid setuid setpcap
    # net_bind_service net_raw sys_chroot mknod audit_write setfcap.
    assert lines[0].split() == ["CapEff:", "00000000a80425fb"]
    assert lines[1].split() == ["NoNewPrivs:", "1"]
    assert lines[2:5] == ["0", "unshare refused", "proc/sys read-only"]


async def test_joins_the_given_network_namespace(lab: Lab) -> None:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 is not installed")
    name = f"hmtest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        path = Path("/var/run/netns") / name
        started = await lab.run(["readlink", "/proc/self/ns/net"], netns=path)
        await lab.exit(started)
        assert started.stdout.read_text() == f"net:[{path.stat().st_ino}]\n"
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


async def test_user_namespace_maps_root_to_an_unprivileged_range(lab: Lab) -> None:
    # The mapped root is nobody on the host: the bundle must sit where others may pass
    # (pytest's own temporary directories are private to root).
    public = Path(tempfile.mkdtemp(prefix="hm-userns-"))
    try:
        public.chmod(0o711)
        lab.tmp = public
        started = await lab.run(
            ["sh", "-c", "cat /proc/self/uid_map; id -u"], user_namespace=True, userns_base=200_000
        )
        status = await lab.exit(started)
        assert status.code == 0, started.stderr.read_text()
        uid_map, uid = started.stdout.read_text().splitlines()
        assert uid_map.split() == ["0", "200000", "65536"]
        assert uid == "0"
    finally:
        await lab.close()
        lab.started.clear()
        shutil.rmtree(public, ignore_errors=True)


def test_forcing_a_missing_runtime_fails(tmp_path: Path) -> None:
    if shutil.which("crun") is not None:
        pytest.skip("crun is installed here")
    with pytest.raises(runc.RuntimeUnavailable, match="crun is not installed"):
        runc.OciRuntime.detect(tmp_path / "oci", force="crun")
    runtime = runc.OciRuntime.detect(tmp_path / "oci")
    assert (runtime.name, runtime.reason) == ("runc", "crun is not installed")


# Helpers


async def wait_for_state(runtime: runc.OciRuntime, cid: str, status: str) -> None:
    while (state := await runtime.state(cid)) is None or state.status != status:
        await asyncio.sleep(0.02)


def shim_of(cid: str) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"hm-shim" in cmdline and cid.encode() in cmdline and b"-c" in cmdline[:3]:
                return int(entry.name)
    raise AssertionError(f"no shim for {cid}")


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])
