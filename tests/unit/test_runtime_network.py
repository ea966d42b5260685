"""Instance address allocation and interface naming, without root and without touching the host.

The allocator is exercised through `ipam.AddressPool` directly; the manager's reconciliation
with what exists runs against stand-in directories for /var/run/netns and /sys/class/net.
"""

from __future__ import annotations

import json
import os
import threading
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

import pytest

from hypermesh.cli import simulate
from hypermesh.runtime import ipam, network

NODE = IPv6Network("fd00:5a:0:7::/64")
CLUSTER = IPv6Network("fd00:5a::/48")


def names(instance_id: str) -> list[tuple[str, str]]:
    return [network.interface_names(instance_id, attempt) for attempt in range(4)]


def reserve(pool: ipam.AddressPool, instance_id: str) -> ipam.Allocation:
    return pool.reserve(instance_id, names(instance_id))


# Allocation


def test_addresses_are_distinct_inside_the_prefix_and_skip_the_gateway(tmp_path: Path) -> None:
    pool = ipam.AddressPool(NODE, tmp_path / "addresses.json")
    got = [reserve(pool, f"i-{n}").address for n in range(200)]
    assert len(set(got)) == len(got)
    assert all(address in NODE for address in got)
    assert NODE.network_address not in got
    assert NODE.network_address + 1 not in got
    assert got[0] == NODE.network_address + 2


def test_reserve_is_idempotent_per_instance(tmp_path: Path) -> None:
    pool = ipam.AddressPool(NODE, tmp_path / "addresses.json")
    first = reserve(pool, "web-1")
    assert reserve(pool, "web-1") == first
    assert len(pool.allocations()) == 1


def test_allocations_survive_a_new_pool_on_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "addresses.json"
    before = ipam.AddressPool(NODE, path)
    a, b = reserve(before, "a"), reserve(before, "b")
    before.mark_ready("a")

    after = ipam.AddressPool(NODE, path)
    assert after.get("a") == ipam.Allocation("a", a.address, a.netns, a.host_veth, ready=True)
    assert after.get("b") == b
    assert reserve(after, "c").address not in {a.address, b.address}


def test_a_released_address_is_not_handed_out_again_at_once(tmp_path: Path) -> None:
    pool = ipam.AddressPool(NODE, tmp_path / "addresses.json")
    freed = reserve(pool, "a").address
    assert [r.instance_id for r in pool.release(["a", "never-there"])] == ["a"]
    # Even from a fresh pool: the position of the counter is part of the state.
    pool = ipam.AddressPool(NODE, tmp_path / "addresses.json")
    assert all(reserve(pool, f"n-{n}").address != freed for n in range(50))


def test_a_small_prefix_wraps_to_freed_addresses_and_reports_exhaustion(tmp_path: Path) -> None:
    # A /125 holds offsets 0..7: 0 and 1 are reserved, leaving six.
    small = IPv6Network("fd00:5a:0:7::/125")
    pool = ipam.AddressPool(small, tmp_path / "addresses.json")
    got = [reserve(pool, f"i-{n}").address for n in range(6)]
    assert got == [small.network_address + offset for offset in range(2, 8)]
    with pytest.raises(ipam.AllocationError, match="no free address"):
        reserve(pool, "one-too-many")
    pool.release(["i-3", "i-1"])
    assert reserve(pool, "x").address == small.network_address + 3
    assert reserve(pool, "y").address == small.network_address + 5


def test_a_64_keeps_the_rfc2526_anycast_identifiers_free(tmp_path: Path) -> None:
    pool = ipam.AddressPool(NODE, tmp_path / "addresses.json")
    assert pool.last == NODE.num_addresses - 1 - 128


def test_two_pools_sharing_a_file_never_hand_out_the_same_address(tmp_path: Path) -> None:
    path = tmp_path / "addresses.json"
    pools = [ipam.AddressPool(NODE, path), ipam.AddressPool(NODE, path)]
    got: list[IPv6Address] = []
    lock = threading.Lock()

    def work(worker: int) -> None:
        for n in range(25):
            address = reserve(pools[worker % 2], f"w{worker}-{n}").address
            with lock:
                got.append(address)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 100
    assert len(set(got)) == 100


def test_a_state_file_of_another_prefix_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "addresses.json"
    reserve(ipam.AddressPool(NODE, path), "a")
    with pytest.raises(ipam.AllocationError, match="fd00:5a:0:7::/64"):
        ipam.AddressPool(IPv6Network("fd00:5a:0:8::/64"), path)


def test_a_broken_state_file_is_refused_not_reset(tmp_path: Path) -> None:
    path = tmp_path / "addresses.json"
    path.write_text("{not json")
    with pytest.raises(ipam.AllocationError, match="not a valid address state file"):
        ipam.AddressPool(NODE, path)
    assert path.read_text() == "{not json"


def test_a_state_file_giving_one_address_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "addresses.json"
    entry = {"address": "fd00:5a:0:7::2", "netns": "hm-1", "host_veth": "hmv1"}
    path.write_text(
        json.dumps({"version": 1, "prefix": str(NODE), "instances": {"a": entry, "b": entry}})
    )
    with pytest.raises(ipam.AllocationError, match="both 'a' and 'b'"):
        ipam.AddressPool(NODE, path)


def test_writes_leave_no_temporary_file(tmp_path: Path) -> None:
    pool = ipam.AddressPool(NODE, tmp_path / "addresses.json")
    reserve(pool, "a")
    pool.mark_ready("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["addresses.json", "addresses.json.lock"]


def test_colliding_names_take_the_next_derivation(tmp_path: Path) -> None:
    pool = ipam.AddressPool(NODE, tmp_path / "addresses.json")
    clash = network.interface_names("a")
    first = pool.reserve("a", [clash])
    second = pool.reserve("b", [clash, network.interface_names("b", 1)])
    assert (first.netns, first.host_veth) == clash
    assert (second.netns, second.host_veth) == network.interface_names("b", 1)


# Names and the node's network


@pytest.mark.parametrize("instance_id", ["a", "0f6e1b1c-3f3e-4b9a-9c0f-6d1f2b3c4d5e", "x" * 500])
def test_interface_names_fit_the_kernel_limit(instance_id: str) -> None:
    netns, veth = network.interface_names(instance_id)
    assert len(veth) <= 15
    assert veth.startswith("hmv") and netns.startswith("hm-")
    assert netns[3:] == veth[3:]
    assert all(c in "0123456789abcdef" for c in veth[3:])
    assert network.interface_names(instance_id) == (netns, veth)
    assert network.interface_names(instance_id, 1) != (netns, veth)


def test_interface_names_differ_between_instances() -> None:
    veths = {network.interface_names(f"instance-{n}")[1] for n in range(5000)}
    assert len(veths) == 5000


def test_node_prefixes_agree_with_the_simulated_nodes() -> None:
    for index in (0, 1, 7, 65535):
        assert network.node_prefix(CLUSTER, index) == simulate._node_network(index)
    with pytest.raises(ValueError):
        network.node_prefix(CLUSTER, 65536)


def test_node_network_checks_its_parts() -> None:
    net = network.NodeNetwork.for_prefix("fd00:5a:0:7::/64")
    assert net.cluster_prefix == CLUSTER
    assert net.gateway == IPv6Address("fd00:5a:0:7::1")
    assert net.bridge == "hm0"
    with pytest.raises(ValueError, match="must be a /64"):
        network.NodeNetwork(CLUSTER, IPv6Network("fd00:5a:0:7::/80"), "hm0", net.gateway)
    with pytest.raises(ValueError, match="not inside"):
        network.NodeNetwork.for_prefix(NODE, cluster_prefix="fd00:5b::/48")
    with pytest.raises(ValueError, match="gateway"):
        network.NodeNetwork(CLUSTER, NODE, "hm0", IPv6Address("fd00:5a:0:7::2"))
    with pytest.raises(ValueError, match="not a valid interface name"):
        network.NodeNetwork.for_prefix(NODE, bridge="a-much-too-long-name")


def test_bridge_mac_is_stable_unicast_and_locally_administered() -> None:
    mac = network.NodeNetwork.for_prefix(NODE).bridge_mac
    assert mac == network.NodeNetwork.for_prefix(NODE).bridge_mac
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01
    assert mac != network.NodeNetwork.for_prefix(NODE, bridge="hm1").bridge_mac


# Reconciling the state file with what exists


def fake_link(sys_class_net: Path, name: str, master: str | None) -> None:
    (sys_class_net / name).mkdir(parents=True)
    if master is not None:
        (sys_class_net / master).mkdir(exist_ok=True)
        os.symlink(f"../{master}", sys_class_net / name / "master")


def test_the_manager_forgets_instances_that_no_longer_exist(tmp_path: Path) -> None:
    netns_dir, sys_class_net, state = tmp_path / "netns", tmp_path / "sys", tmp_path / "state"
    netns_dir.mkdir()
    sys_class_net.mkdir()
    pool = ipam.AddressPool(NODE, state / network.STATE_FILE)
    alive, gone, half = reserve(pool, "alive"), reserve(pool, "gone"), reserve(pool, "half")
    pool.mark_ready("alive")
    pool.mark_ready("gone")
    # "alive" is complete; "gone" left nothing behind (a reboot); "half" crashed mid-setup.
    (netns_dir / alive.netns).touch()
    fake_link(sys_class_net, alive.host_veth, "hm0")
    (netns_dir / half.netns).touch()

    manager = network.NetworkManager(
        network.NodeNetwork.for_prefix(NODE),
        state,
        netns_dir=netns_dir,
        sys_class_net=sys_class_net,
    )

    assert manager.attachments() == [
        network.Attachment("alive", netns_dir / alive.netns, alive.host_veth, alive.address, 64)
    ]
    remaining = ipam.AddressPool(NODE, state / network.STATE_FILE)
    assert {a.instance_id for a in remaining.allocations()} == {"alive", "half"}
    # The vanished instance's address is not the next one handed out.
    assert reserve(remaining, "new").address not in {gone.address, alive.address, half.address}


def test_attachments_leave_out_veths_on_another_bridge(tmp_path: Path) -> None:
    netns_dir, sys_class_net, state = tmp_path / "netns", tmp_path / "sys", tmp_path / "state"
    netns_dir.mkdir()
    pool = ipam.AddressPool(NODE, state / network.STATE_FILE)
    other = reserve(pool, "other")
    pool.mark_ready("other")
    (netns_dir / other.netns).touch()
    fake_link(sys_class_net, other.host_veth, "docker0")

    manager = network.NetworkManager(
        network.NodeNetwork.for_prefix(NODE),
        state,
        netns_dir=netns_dir,
        sys_class_net=sys_class_net,
    )
    assert manager.attachments() == []


def test_attach_without_the_bridge_says_what_to_do(tmp_path: Path) -> None:
    sys_class_net = tmp_path / "sys"
    sys_class_net.mkdir()
    manager = network.NetworkManager(
        network.NodeNetwork.for_prefix(NODE, bridge="hmnone0"),
        tmp_path / "state",
        netns_dir=tmp_path / "netns",
        sys_class_net=sys_class_net,
    )
    with pytest.raises(network.NetworkError, match="ensure_bridge"):
        manager.attach("a")
    # Nothing was recorded for the refused attach.
    assert ipam.AddressPool(NODE, tmp_path / "state" / network.STATE_FILE).allocations() == []
    # Detaching what was never attached is fine.
    manager.detach("a")
