"""User namespaces without root: the id range pool, its file, and the runtime spec's rules.

The pool's claims (disjoint ranges, the same range after a restart, nothing half-written after
a crash) are checked against the file itself, with fresh pools standing in for restarted
agents, threads and a killed process. What needs root (mounts, containers, network
namespaces) is in tests/e2e/test_runtime_userns.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hypermesh.runtime import idmap, oci, userns

SIZE = idmap.RANGE_SIZE
FIRST = userns.FIRST_BASE


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "agent" / userns.STATE_FILE


# Ranges


def test_ranges_are_disjoint_aligned_and_above_normal_users(path: Path) -> None:
    pool = userns.RangePool(path)
    ranges = [pool.allocate(f"uid-{n}") for n in range(5)]
    assert [r.base for r in ranges] == [FIRST + n * SIZE for n in range(5)]
    assert all(r.size == SIZE for r in ranges)
    assert FIRST == 1 << 20
    for earlier, later in zip(ranges, ranges[1:], strict=False):
        assert earlier.end <= later.base


def test_allocate_is_idempotent_and_survives_a_restart(path: Path) -> None:
    pool = userns.RangePool(path)
    first = pool.allocate("a")
    assert pool.allocate("a") == first
    pool.allocate("b")
    # A new pool over the same file is what a restarted agent has.
    restarted = userns.RangePool(path)
    assert restarted.get("a") == first
    assert restarted.allocate("a") == first
    assert restarted.allocations() == {"a": first, "b": idmap.IdRange(FIRST + SIZE)}
    assert restarted.get("unknown") is None


def test_data_dir_layout(tmp_path: Path) -> None:
    pool = userns.RangePool.for_data_dir(tmp_path)
    pool.allocate("a")
    assert json.loads((tmp_path / "userns" / "ranges.json").read_text())["instances"] == {
        "a": FIRST
    }
    assert (tmp_path / "userns").stat().st_mode & 0o077 == 0


def test_release_and_orphans(path: Path) -> None:
    pool = userns.RangePool(path)
    a, b, c = (pool.allocate(name) for name in "abc")
    assert pool.release(["a", "never-allocated"]) == {"a": a}
    assert pool.get("a") is None
    assert pool.release(["a"]) == {}
    # The agent at start keeps only the Instances still bound to it.
    assert pool.release_orphans({"c"}) == {"b": b}
    assert userns.RangePool(path).allocations() == {"c": c}


def test_a_released_range_does_not_come_back_at_once(path: Path) -> None:
    # Three slots only, to see the wrap-around.
    pool = userns.RangePool(path, limit=FIRST + 3 * SIZE)
    a = pool.allocate("a")
    pool.release(["a"])
    b = pool.allocate("b")
    assert b.base == FIRST + SIZE  # not a's
    c = pool.allocate("c")
    assert c.base == FIRST + 2 * SIZE
    # At the top it wraps around to the lowest free slot: a's, free for a while now.
    assert pool.allocate("d") == a


def test_an_exhausted_pool_says_so(path: Path) -> None:
    pool = userns.RangePool(path, limit=FIRST + 2 * SIZE)
    pool.allocate("a")
    pool.allocate("b")
    with pytest.raises(userns.RangeError, match=f"all 2 id ranges of {SIZE} from {FIRST}"):
        pool.allocate("c")
    pool.release(["a"])
    assert pool.allocate("c").base == FIRST


def test_bounds_are_checked(path: Path) -> None:
    with pytest.raises(userns.RangeError, match="positive multiple of 65536"):
        userns.RangePool(path, first=FIRST + 1)
    with pytest.raises(userns.RangeError, match="at least one range must fit"):
        userns.RangePool(path, limit=FIRST + SIZE - 1)
    with pytest.raises(userns.RangeError, match="empty instance id"):
        userns.RangePool(path).allocate("")
    # Every range stays below 2**31, where tools reading ids as signed numbers still work.
    pool = userns.RangePool(path)
    assert pool.first + pool.slots * SIZE <= 1 << 31


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "is not a valid id range state file"),
        ('{"version": 2}', "is not a valid id range state file"),
        ('{"size": 4096}', "holds ranges of 4096 ids, but ranges here are 65536"),
        ('{"instances": {"a": 1000}}', r"instances\['a'\] = 1000 is not the base of a range"),
        (f'{{"instances": {{"a": {FIRST + 1}}}}}', "is not the base of a range"),
        (
            f'{{"instances": {{"a": {FIRST}, "b": {FIRST}}}}}',
            f"ids from {FIRST} are given to both 'a' and 'b'",
        ),
    ],
)
def test_a_damaged_file_is_a_precise_error(path: Path, content: str, message: str) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with pytest.raises(userns.RangeError, match=message) as caught:
        userns.RangePool(path)
    assert str(path) in str(caught.value)


def test_concurrent_pools_never_share_a_range(path: Path) -> None:
    # Separate pools open the lock file separately, as two processes would.
    results: dict[str, idmap.IdRange] = {}
    lock = threading.Lock()

    def allocate(worker: int) -> None:
        pool = userns.RangePool(path)
        for n in range(10):
            got = pool.allocate(f"w{worker}-{n}")
            with lock:
                results[f"w{worker}-{n}"] = got

    threads = [threading.Thread(target=allocate, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bases = [r.base for r in results.values()]
    assert len(bases) == len(set(bases)) == 40
    assert userns.RangePool(path).allocations() == results


def test_a_killed_allocator_leaves_every_acknowledged_range(path: Path) -> None:
    # The child prints an id only after allocate() returned, i.e. after the file was synced.
    script = (
        "import sys\nfrom pathlib import Path\nfrom hypermesh.runtime import userns\n"
        "pool = userns.RangePool(Path(sys.argv[1]))\n"
        "n = 0\n"
        "while True:\n"
        "    r = pool.allocate(f'i{n}')\n"
        "    print(f'i{n} {r.base}', flush=True)\n"
        "    pool.release([f'i{n - 5}'])\n"
        "    n += 1\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    acknowledged = [child.stdout.readline().split() for _ in range(40)]
    child.send_signal(signal.SIGKILL)
    child.wait()
    child.stdout.close()
    # Whatever instant the kill hit, the file is whole and holds the last acknowledged ranges.
    survivors = userns.RangePool(path).allocations()
    for name, base in acknowledged[-5:]:
        assert survivors[name] == idmap.IdRange(int(base))
    assert len({r.base for r in survivors.values()}) == len(survivors)


def test_id_ranges() -> None:
    ids = idmap.IdRange(FIRST)
    assert (ids.end, ids.host_id(0), ids.host_id(1000)) == (FIRST + SIZE, FIRST, FIRST + 1000)
    # An owner the range cannot express is given to the range's root.
    assert ids.host_id(70_000) == FIRST
    assert ids.map_line() == f"0 {FIRST} {SIZE}\n"
    for bad in (0, -SIZE, (1 << 31) - SIZE + 1):
        with pytest.raises(ValueError, match="need base > 0"):
            idmap.IdRange(bad)


# The runtime spec


class Image:
    entrypoint = ("/bin/sh",)
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir = "/"

    def __init__(self, user: str = "") -> None:
        self.user = user


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0::/:/bin/sh\nbig:x:70000:70000::/:/bin/sh\nmember:x:1000:1000::/:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nwide:x:80000:member\n")
    return root


def spec(rootfs: Path, image: Image | None = None, **options: object) -> dict[str, object]:
    security = options.pop("securityContext", {})
    return oci.runtime_spec(
        container={"name": "main", "image": "app", "securityContext": security},
        image=image or Image(),
        rootfs=rootfs,
        hostname="h",
        cgroups_path="/hypermesh/x",
        netns=Path("/var/run/netns/hm-abc"),
        field_path="spec.containers[0]",
        **options,  # type: ignore[arg-type]
    )


def test_the_spec_maps_the_instances_range(rootfs: Path) -> None:
    config = spec(rootfs, user_namespace=True, userns_base=FIRST)
    linux = config["linux"]
    assert isinstance(linux, dict)
    mapping = [{"containerID": 0, "hostID": FIRST, "size": SIZE}]
    assert linux["uidMappings"] == linux["gidMappings"] == mapping
    namespaces = linux["namespaces"]
    # The agent's network namespace is joined, the user namespace is new.
    assert {"type": "network", "path": "/var/run/netns/hm-abc"} in namespaces
    assert {"type": "user"} in namespaces


def test_sys_is_bound_recursively_read_only(rootfs: Path) -> None:
    mounts = spec(rootfs, user_namespace=True, userns_base=FIRST)["mounts"]
    assert isinstance(mounts, list)
    sys_mount = next(m for m in mounts if m["destination"] == "/sys")
    assert (sys_mount["type"], sys_mount["source"]) == ("none", "/sys")
    assert "rbind" in sys_mount["options"] and "rro" in sys_mount["options"]
    privileged = spec(
        rootfs, user_namespace=True, userns_base=FIRST, securityContext={"privileged": True}
    )["mounts"]
    assert isinstance(privileged, list)
    assert "rro" not in next(m for m in privileged if m["destination"] == "/sys")["options"]


@pytest.mark.parametrize(
    ("image_user", "security", "field", "message"),
    [
        ("", {"runAsUser": 70_000}, "securityContext.runAsUser", "user id 70000"),
        ("big", {}, "image", "user id 70000"),
        ("", {"runAsGroup": SIZE}, "securityContext.runAsGroup", f"group id {SIZE}"),
        ("member", {}, "image", "supplementary group id 80000"),
    ],
)
def test_ids_outside_the_namespace_are_precise_errors(
    rootfs: Path, image_user: str, security: dict[str, int], field: str, message: str
) -> None:
    with pytest.raises(oci.SpecError) as caught:
        spec(
            rootfs,
            Image(image_user),
            user_namespace=True,
            userns_base=FIRST,
            securityContext=security,
        )
    assert caught.value.field == f"spec.containers[0].{field}"
    assert caught.value.problem.startswith(message)
    assert "outside the Instance's user namespace (spec.hostUsers: false maps ids 0 to 65535)" in (
        caught.value.problem
    )
    # The same ids are fine without a user namespace.
    spec(rootfs, Image(image_user), securityContext=security)


@pytest.mark.parametrize("base", [0, 2**32 - SIZE])
def test_a_base_that_cannot_hold_a_range_is_refused(rootfs: Path, base: int) -> None:
    with pytest.raises(oci.SpecError, match=f"userns_base: {base} cannot be the first host id"):
        spec(rootfs, user_namespace=True, userns_base=base)


def test_only_changes_are_written(path: Path) -> None:
    pool = userns.RangePool(path)
    pool.release(["nobody"])
    assert not path.exists()
    pool.allocate("a")
    written = path.stat().st_mtime_ns
    path.chmod(0o400)  # a write would now replace the file, and with it this mode
    pool.allocate("a")
    pool.release(["b"])
    assert (path.stat().st_mtime_ns, path.stat().st_mode & 0o777) == (written, 0o400)
