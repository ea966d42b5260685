"""oci.runtime_spec without root: Kubernetes' process rules, hardening, resources, users, errors.

Also the parts of runc.py that only read files: the exit file the shim writes and the cgroup
mount table.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hypermesh.runtime import oci, runc, seccomp


@dataclass(frozen=True)
class Image:
    entrypoint: tuple[str, ...] = ("/entry",)
    cmd: tuple[str, ...] = ("--default",)
    env: tuple[str, ...] = ("PATH=/image/bin", "FROM_IMAGE=1", "SHARED=image")
    working_dir: str = "/srv"
    user: str = ""


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "app:x:1000:1001:app:/home/app:/bin/sh\n"
        "nobody:x:65534:65534::/:/bin/false\n"
    )
    (root / "etc" / "group").write_text(
        "root:x:0:\nwheel:x:10:root,app\nstaff:x:50:app\napp:x:1001:\nnogroup:x:65534:\n"
    )
    return root


def spec(rootfs: Path, image: Image | None = None, **container: Any) -> dict[str, Any]:
    options = {k: container.pop(k) for k in list(container) if k.startswith("_")}
    return oci.runtime_spec(
        container={"name": "main", "image": "app", **container},
        image=image or Image(),
        rootfs=rootfs,
        hostname="web-0",
        cgroups_path="/hypermesh/uid-main",
        netns=None,
        field_path="spec.containers[0]",
        **{k[1:]: v for k, v in options.items()},
    )


# The process


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        (None, None, ["/entry", "--default"]),
        (["/bin/app"], None, ["/bin/app"]),  # a command alone drops the image's CMD
        (None, ["--flag"], ["/entry", "--flag"]),  # args alone keep the ENTRYPOINT
        (["/bin/app"], ["--flag"], ["/bin/app", "--flag"]),
        ([], [], ["/entry", "--default"]),  # empty lists count as unset, as in Kubernetes
    ],
)
def test_command_and_args_replace_entrypoint_and_cmd(
    rootfs: Path, command: list[str] | None, args: list[str] | None, expected: list[str]
) -> None:
    container: dict[str, Any] = {}
    if command is not None:
        container["command"] = command
    if args is not None:
        container["args"] = args
    assert spec(rootfs, **container)["process"]["args"] == expected


def test_nothing_to_run_is_an_error(rootfs: Path) -> None:
    with pytest.raises(oci.SpecError, match=r"^spec\.containers\[0\]\.command: nothing to run"):
        spec(rootfs, Image(entrypoint=(), cmd=()))


def test_env_overlays_the_image_and_expands_references(rootfs: Path) -> None:
    process = spec(
        rootfs,
        env=[
            {"name": "SHARED", "value": "container"},
            {"name": "GREETING", "value": "hello $(SHARED) $$(SHARED) $(FROM_IMAGE) $(MISSING"},
            {"name": "EMPTY"},
        ],
        args=["$(GREETING)", "$(PATH)"],
    )["process"]
    env = dict(entry.split("=", 1) for entry in process["env"])
    assert env["PATH"] == "/image/bin"
    assert env["FROM_IMAGE"] == "1"
    assert env["SHARED"] == "container"
    # Only the container's own earlier variables expand; the image's are invisible to kubelet.
    assert env["GREETING"] == "hello container $(SHARED) $(FROM_IMAGE) $(MISSING"
    assert env["EMPTY"] == ""
    assert env["HOSTNAME"] == "web-0"
    assert process["args"] == ["/entry", env["GREETING"], "$(PATH)"]


def test_image_arguments_are_never_expanded(rootfs: Path) -> None:
    image = Image(cmd=("$(SHARED)",))
    process = spec(rootfs, image, env=[{"name": "SHARED", "value": "x"}])["process"]
    assert process["args"] == ["/entry", "$(SHARED)"]


def test_path_defaults_when_the_image_has_none(rootfs: Path) -> None:
    env = spec(rootfs, Image(env=()))["process"]["env"]
    assert f"PATH={oci.DEFAULT_PATH}" in env


def test_working_dir(rootfs: Path) -> None:
    assert spec(rootfs)["process"]["cwd"] == "/srv"
    assert spec(rootfs, workingDir="/data")["process"]["cwd"] == "/data"
    assert spec(rootfs, Image(working_dir=""))["process"]["cwd"] == "/"
    with pytest.raises(oci.SpecError, match=r"spec\.containers\[0\]\.workingDir: 'data'"):
        spec(rootfs, workingDir="data")


def test_process_defaults(rootfs: Path) -> None:
    process = spec(rootfs)["process"]
    assert process["terminal"] is False
    assert process["noNewPrivileges"] is True
    assert process["oomScoreAdj"] == 0
    assert process["rlimits"] == [
        {"type": "RLIMIT_NOFILE", "hard": oci.nofile_limit(), "soft": oci.nofile_limit()}
    ]
    assert (
        spec(rootfs, securityContext={"allowPrivilegeEscalation": True})["process"][
            "noNewPrivileges"
        ]
        is False
    )


# Users


@pytest.mark.parametrize(
    ("image_user", "security", "expected"),
    [
        ("", {}, {"uid": 0, "gid": 0, "additionalGids": [10]}),
        ("1000", {}, {"uid": 1000, "gid": 1001, "additionalGids": [10, 50]}),
        ("app", {}, {"uid": 1000, "gid": 1001, "additionalGids": [10, 50]}),
        ("app:staff", {}, {"uid": 1000, "gid": 50, "additionalGids": [10]}),
        ("4242", {}, {"uid": 4242, "gid": 0}),  # unknown numeric ids are fine
        ("4242:77", {}, {"uid": 4242, "gid": 77}),
        ("app", {"runAsUser": 65534}, {"uid": 65534, "gid": 65534}),
        ("app", {"runAsGroup": 5}, {"uid": 1000, "gid": 5, "additionalGids": [10, 50]}),
        ("", {"runAsUser": 7, "runAsGroup": 8}, {"uid": 7, "gid": 8}),
    ],
)
def test_user_resolution(
    rootfs: Path, image_user: str, security: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert spec(rootfs, Image(user=image_user), securityContext=security)["process"]["user"] == (
        expected
    )


def test_unknown_user_names_are_precise_errors(rootfs: Path) -> None:
    with pytest.raises(oci.SpecError, match=r"no user 'alice' in the image's /etc/passwd$"):
        spec(rootfs, Image(user="alice"))
    with pytest.raises(oci.SpecError, match=r"no group 'admins' in the image's /etc/group"):
        spec(rootfs, Image(user="app:admins"))
    (rootfs / "etc" / "passwd").unlink()
    with pytest.raises(oci.SpecError, match=r"\(the image has no /etc/passwd\)"):
        spec(rootfs, Image(user="app"))


def test_run_as_non_root(rootfs: Path) -> None:
    with pytest.raises(oci.SpecError, match=r"securityContext\.runAsNonRoot: .* as root"):
        spec(rootfs, securityContext={"runAsNonRoot": True})
    user = spec(rootfs, Image(user="app"), securityContext={"runAsNonRoot": True})["process"][
        "user"
    ]
    assert user["uid"] == 1000


def test_passwd_symlinks_resolve_inside_the_image(rootfs: Path, tmp_path: Path) -> None:
    # An absolute link (even one climbing above /) means a file of the image, never the host's.
    (rootfs / "etc" / "passwd").unlink()
    (rootfs / "etc" / "passwd").symlink_to("/../../../private/passwd")
    (rootfs / "private").mkdir()
    (rootfs / "private" / "passwd").write_text("svc:x:321:654::/:/bin/sh\n")
    assert spec(rootfs, Image(user="svc"))["process"]["user"] == {"uid": 321, "gid": 654}


def test_bad_ids_are_errors(rootfs: Path) -> None:
    with pytest.raises(oci.SpecError, match=r"securityContext\.runAsUser: -1 is not a user"):
        spec(rootfs, securityContext={"runAsUser": -1})


# Hardening


def test_default_capabilities_are_dockers(rootfs: Path) -> None:
    capabilities = spec(rootfs)["process"]["capabilities"]
    assert set(capabilities["bounding"]) == set(oci.DEFAULT_CAPABILITIES)
    assert capabilities["bounding"] == capabilities["effective"] == capabilities["permitted"]
    assert "inheritable" not in capabilities and "ambient" not in capabilities


def test_capabilities_add_and_drop(rootfs: Path) -> None:
    def granted(**given: Any) -> set[str]:
        security = {"capabilities": given}
        return set(spec(rootfs, securityContext=security)["process"]["capabilities"]["bounding"])

    assert granted(add=["NET_ADMIN"], drop=["CAP_NET_RAW", "kill"]) == (
        set(oci.DEFAULT_CAPABILITIES) - {"CAP_NET_RAW", "CAP_KILL"} | {"CAP_NET_ADMIN"}
    )
    assert granted(drop=["ALL"], add=["NET_BIND_SERVICE"]) == {"CAP_NET_BIND_SERVICE"}
    assert granted(drop=["ALL"]) == set()
    assert granted(add=["ALL"]) == set(oci.ALL_CAPABILITIES)
    with pytest.raises(oci.SpecError, match=r"capabilities\.add\[1\]: 'NET_ADMN' is not"):
        granted(add=["NET_ADMIN", "NET_ADMN"])


def test_seccomp_denylist_follows_capabilities(rootfs: Path) -> None:
    def denied(security: dict[str, Any]) -> set[str]:
        rules = spec(rootfs, securityContext=security)["linux"]["seccomp"]["syscalls"]
        return {name for rule in rules if "args" not in rule for name in rule["names"]}

    default = denied({})
    assert {"keyctl", "mount", "unshare", "bpf", "io_uring_setup", "clone3"} <= default
    assert "ptrace" not in default and "read" not in default
    with_admin = denied({"capabilities": {"add": ["SYS_ADMIN"]}})
    assert "mount" not in with_admin and "clone3" not in with_admin
    assert "keyctl" in with_admin  # keyrings are never namespaced


def test_seccomp_refuses_namespace_flags_of_clone() -> None:
    profile = seccomp.default_profile(oci.DEFAULT_CAPABILITIES, machine="x86_64")
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    clone = [rule for rule in profile["syscalls"] if rule["names"] == ["clone"]]
    assert {rule["args"][0]["value"] for rule in clone} == set(seccomp.CLONE_NAMESPACE_FLAGS)
    assert all(rule["args"][0]["op"] == "SCMP_CMP_MASKED_EQ" for rule in clone)


def test_masked_and_readonly_paths(rootfs: Path) -> None:
    linux = spec(rootfs)["linux"]
    assert {"/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware", "/proc/acpi"} <= set(
        linux["maskedPaths"]
    )
    assert linux["readonlyPaths"] == [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ]


def test_privileged_lifts_the_hardening(rootfs: Path) -> None:
    config = spec(rootfs, securityContext={"privileged": True})
    assert config["process"]["capabilities"]["bounding"] == list(oci.ALL_CAPABILITIES)
    assert config["process"]["noNewPrivileges"] is False
    assert not {"seccomp", "maskedPaths", "readonlyPaths"} & set(config["linux"])
    assert config["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]


def test_read_only_root(rootfs: Path) -> None:
    assert spec(rootfs)["root"] == {"path": str(rootfs), "readonly": False}
    assert spec(rootfs, securityContext={"readOnlyRootFilesystem": True})["root"]["readonly"]
    assert spec(rootfs, _read_only_root=True)["root"]["readonly"]


# Namespaces and mounts


def test_namespaces_and_the_given_netns(rootfs: Path) -> None:
    types = [ns["type"] for ns in spec(rootfs)["linux"]["namespaces"]]
    assert types == ["pid", "ipc", "uts", "mount", "network"]
    given = oci.runtime_spec(
        container={"name": "c", "image": "i"},
        image=Image(),
        rootfs=rootfs,
        hostname="h",
        cgroups_path="/hypermesh/x",
        netns=Path("/var/run/netns/hm-abc"),
    )
    assert {"type": "network", "path": "/var/run/netns/hm-abc"} in given["linux"]["namespaces"]


def test_user_namespace(rootfs: Path) -> None:
    config = spec(rootfs, _user_namespace=True, _userns_base=300_000)
    linux = config["linux"]
    assert {"type": "user"} in linux["namespaces"]
    mapping = [{"containerID": 0, "hostID": 300_000, "size": 65536}]
    assert linux["uidMappings"] == mapping and linux["gidMappings"] == mapping
    sys_mount = next(m for m in config["mounts"] if m["destination"] == "/sys")
    assert sys_mount["type"] == "none" and "rbind" in sys_mount["options"]


def test_standard_mounts(rootfs: Path) -> None:
    mounts = {m["destination"]: m for m in spec(rootfs)["mounts"]}
    assert list(mounts) == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ]
    assert "ro" in mounts["/sys"]["options"] and "ro" in mounts["/sys/fs/cgroup"]["options"]
    extra = {"destination": "/etc/hosts", "type": "bind", "source": "/x", "options": ["rbind"]}
    assert spec(rootfs, _extra_mounts=[extra])["mounts"][-1] == extra


# Resources


def resources(rootfs: Path, **given: Any) -> dict[str, Any]:
    return spec(rootfs, resources=given)["linux"]["resources"]


def test_limits_and_requests_become_cgroup_settings(rootfs: Path) -> None:
    got = resources(
        rootfs,
        limits={"memory": "128Mi", "cpu": "1.5", "pids": 100},
        requests={"cpu": "250m", "memory": "64Mi"},
    )
    assert got["memory"] == {"limit": 128 << 20}
    assert got["cpu"] == {"quota": 150_000, "period": 100_000, "shares": 256}
    assert got["pids"] == {"limit": 100}
    assert got["devices"] == [{"allow": False, "access": "rwm"}]


def test_requests_default_to_limits_and_best_effort_gets_minimum_shares(rootfs: Path) -> None:
    assert resources(rootfs, limits={"cpu": "500m"})["cpu"]["shares"] == 512
    best_effort = resources(rootfs)
    assert best_effort["cpu"] == {"shares": 2}
    assert "memory" not in best_effort
    assert best_effort["pids"] == {"limit": oci.DEFAULT_PIDS_LIMIT}


def test_quantity_forms(rootfs: Path) -> None:
    assert resources(rootfs, limits={"memory": "1G"})["memory"]["limit"] == 10**9
    assert resources(rootfs, limits={"memory": "1.5Gi"})["memory"]["limit"] == 3 << 29
    assert resources(rootfs, limits={"memory": 1048576})["memory"]["limit"] == 1 << 20
    # Tiny cpu limits are raised to Kubernetes' 1 ms minimum quota.
    assert resources(rootfs, limits={"cpu": "1m"})["cpu"]["quota"] == 1000
    assert resources(rootfs, requests={"cpu": "1000"})["cpu"]["shares"] == 262144


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {"limits": {"memory": "12XB"}},
            'spec.containers[0].resources.limits.memory: "12XB" is not a quantity',
        ),
        ({"requests": {"cpu": "fast"}}, 'spec.containers[0].resources.requests.cpu: "fast"'),
        (
            {"limits": {"cpu": "-1"}},
            'spec.containers[0].resources.limits.cpu: "-1" is not a quantity (must not',
        ),
        ({"limits": {"pids": "0"}}, "spec.containers[0].resources.limits.pids: must be greater"),
        (
            {"limits": {"memory": True}},
            "spec.containers[0].resources.limits.memory: True is not a quantity",
        ),
    ],
)
def test_bad_quantities_name_the_field(rootfs: Path, given: dict[str, Any], message: str) -> None:
    with pytest.raises(oci.SpecError) as caught:
        resources(rootfs, **given)
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, ValueError)


def test_bad_shapes_are_errors(rootfs: Path) -> None:
    with pytest.raises(oci.SpecError, match=r"spec\.containers\[0\]\.command: expected a list"):
        spec(rootfs, command="/bin/sh -c true")
    with pytest.raises(oci.SpecError, match=r"spec\.containers\[0\]\.env\[0\]\.name"):
        spec(rootfs, env=[{"name": "A=B", "value": "x"}])
    with pytest.raises(oci.SpecError, match="cgroupsPath"):
        oci.runtime_spec(
            container={"name": "c", "image": "i"},
            image=Image(),
            rootfs=rootfs,
            hostname="h",
            cgroups_path="/hypermesh/../../etc",
            netns=None,
        )


# What runc.py reads from files


@pytest.fixture
def runtime(tmp_path: Path) -> runc.OciRuntime:
    layout = runc.CgroupLayout(
        (Path("/sys/fs/cgroup/memory"),), Path("/sys/fs/cgroup/memory"), False
    )
    return runc.OciRuntime(
        name="runc",
        binary=Path("/bin/true"),
        state_dir=tmp_path / "oci",
        reason="test",
        cgroups=layout,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("code=0\nstarted=1\noom_kill=0\nfailcnt=0\n", runc.ExitStatus(0, None, False)),
        ("code=3\nstarted=1\noom_kill=0\nfailcnt=9\n", runc.ExitStatus(3, None, False)),
        ("code=143\nstarted=1\noom_kill=0\n", runc.ExitStatus(143, signal.SIGTERM, False)),
        (
            "code=137\nstarted=1\noom_kill=1\nfailcnt=40\n",
            runc.ExitStatus(137, signal.SIGKILL, True),
        ),
        (
            "code=137\nstarted=1\noom_kill=0\nfailcnt=40\n",
            runc.ExitStatus(137, signal.SIGKILL, False),
        ),
        # No OOM-kill counter (old kernels): a SIGKILL after hitting the limit counts as one.
        (
            "code=137\nstarted=1\noom_kill=\nfailcnt=40\n",
            runc.ExitStatus(137, signal.SIGKILL, True),
        ),
        ("code=1\nstarted=1\noom_kill=\nfailcnt=40\n", runc.ExitStatus(1, None, False)),
    ],
)
def test_exit_files(
    runtime: runc.OciRuntime, tmp_path: Path, text: str, expected: runc.ExitStatus
) -> None:
    exit_file = tmp_path / "exit"
    assert runtime.exit_status(exit_file) is None
    exit_file.write_text(text)
    assert runtime.exit_status(exit_file) == expected


def test_exit_file_of_a_container_that_never_started(
    runtime: runc.OciRuntime, tmp_path: Path
) -> None:
    log = tmp_path / "runtime.log"
    log.write_text(
        '{"level":"warning","msg":"a warning","time":"t"}\n'
        '{"level":"error","msg":"runc run failed: exec: \\"/x\\": no such file","time":"t"}\n'
    )
    (tmp_path / "exit").write_text(f"code=1\nstarted=0\noom_kill=\nfailcnt=\nlog={log}\n")
    status = runtime.exit_status(tmp_path / "exit")
    assert status is not None
    assert status.error == 'a warning / runc run failed: exec: "/x": no such file'


def test_list_knows_runtime_state_and_records(runtime: runc.OciRuntime) -> None:
    (runtime.root / "a").mkdir()
    (runtime.records / "b").mkdir()
    (runtime.root / "not a container id").mkdir()
    assert runtime.list() == ["a", "b"]


def test_cgroup_layout_of_a_hybrid_host(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "25 1 0:23 / /sys rw - sysfs sysfs rw\n"
        "30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
        "31 25 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
        "32 25 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
        "33 25 0:29 / /sys/fs/cgroup/odd\\040name rw - cgroup cgroup rw,name=odd\n"
    )
    layout = runc.CgroupLayout.read(mountinfo)
    assert layout.mounts == (
        Path("/sys/fs/cgroup/unified"),
        Path("/sys/fs/cgroup/cpu"),
        Path("/sys/fs/cgroup/memory"),
        Path("/sys/fs/cgroup/odd name"),
    )
    assert layout.memory_files("/hypermesh/c1") == (
        "/sys/fs/cgroup/memory/hypermesh/c1/memory.oom_control",
        "/sys/fs/cgroup/memory/hypermesh/c1/memory.failcnt",
    )
    assert Path("/sys/fs/cgroup/cpu/hypermesh/c1") in layout.directories("/hypermesh/c1")
    with pytest.raises(ValueError):
        layout.directories("/hypermesh/../..")


def test_cgroup_layout_removes_only_the_container(tmp_path: Path) -> None:
    hierarchy = tmp_path / "memory"
    (hierarchy / "hypermesh" / "c1" / "child").mkdir(parents=True)
    (hierarchy / "hypermesh" / "c2").mkdir()
    layout = runc.CgroupLayout((hierarchy,), hierarchy, False)
    assert layout.remove("/hypermesh/c1") == []
    assert sorted(p.name for p in (hierarchy / "hypermesh").iterdir()) == ["c2"]


async def test_container_ids_are_checked(runtime: runc.OciRuntime) -> None:
    with pytest.raises(ValueError, match=r"container id '\.\./x'"):
        await runtime.state("../x")
