"""Instance networks on a real bridge: reachability, adoption, repair and complete cleanup.

Each test builds its own bridge (`hme<pid><n>`) holding its own /64 of a ULA /48 derived from the
process id, so parallel runs and a node agent on the same machine never meet. Traffic goes only
to addresses inside the namespaces the tests create. Reachability is checked with `ping` (iputils
or busybox); without either, with a one-datagram UDP echo run inside the namespaces.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv6Network
from pathlib import Path

import pytest

from hypermesh.runtime import network

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="needs root: creates a bridge, network namespaces and veths"
    ),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 (`ip`) is not installed"),
]

PID = os.getpid()
CLUSTER = IPv6Network(f"fd7e:{PID >> 16:x}:{PID & 0xFFFF:x}::/48")
_serial = itertools.count(1)

UDP_ECHO_SERVER = """
import socket, sys
with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
    s.bind((sys.argv[1], 7007))
    print("ready", flush=True)
    data, peer = s.recvfrom(64)
    s.sendto(data, peer)
"""
UDP_ECHO_CLIENT = """
import socket, sys
with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
    s.settimeout(2)
    s.sendto(b"hello", (sys.argv[1], 7007))
    sys.exit(0 if s.recv(64) == b"hello" else 1)
"""


def _in(netns: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else argv


def reaches(source: str | None, target: network.Attachment) -> bool:
    """Whether namespace `source` (None: the host) gets an answer from `target`'s address."""
    address = str(target.address)
    if shutil.which("ping"):
        probe = ["ping", "-6", "-c1", "-W1", address]
    elif Path("/bin/busybox").exists():
        probe = ["/bin/busybox", "ping6", "-c1", "-W1", address]
    else:
        return _udp_echo(source, target)
    # A first probe may go before neighbour discovery settles; a few tries make this robust.
    return any(
        subprocess.run(_in(source, probe), capture_output=True).returncode == 0 for _ in range(3)
    )


def _udp_echo(source: str | None, target: network.Attachment) -> bool:
    server = subprocess.Popen(
        _in(target.netns.name, [sys.executable, "-c", UDP_ECHO_SERVER, str(target.address)]),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = [sys.executable, "-c", UDP_ECHO_CLIENT, str(target.address)]
        return subprocess.run(_in(source, client), capture_output=True).returncode == 0
    finally:
        server.kill()
        server.wait()


def netns_exists(name: str) -> bool:
    return (network.NETNS_DIR / name).exists()


def link_exists(name: str) -> bool:
    return Path("/sys/class/net", name).exists()


def bridge_ports(bridge: str) -> list[str]:
    return sorted(os.listdir(f"/sys/class/net/{bridge}/brif"))


def _force_clean(net: network.NodeNetwork, state_dir: Path) -> None:
    """Remove what a failed test may have left, whatever state the manager is in."""
    for port in bridge_ports(net.bridge) if link_exists(net.bridge) else []:
        subprocess.run(["ip", "link", "del", "dev", port], capture_output=True)
        subprocess.run(["ip", "netns", "del", "hm-" + port[3:]], capture_output=True)
    state_file = state_dir / network.STATE_FILE
    recorded = json.loads(state_file.read_text())["instances"] if state_file.exists() else {}
    for entry in recorded.values():
        subprocess.run(["ip", "link", "del", "dev", entry["host_veth"]], capture_output=True)
        subprocess.run(["ip", "netns", "del", entry["netns"]], capture_output=True)
    subprocess.run(["ip", "link", "del", "dev", net.bridge], capture_output=True)


@pytest.fixture
def node_net(tmp_path: Path) -> Iterator[network.NodeNetwork]:
    """A NodeNetwork with a bridge and /64 of its own; everything is removed afterwards."""
    serial = next(_serial)
    net = network.NodeNetwork.for_prefix(
        network.node_prefix(CLUSTER, serial), cluster_prefix=CLUSTER, bridge=f"hme{PID}{serial}"
    )
    yield net
    _force_clean(net, tmp_path / "state")


@pytest.fixture
def ids() -> tuple[str, str]:
    serial = next(_serial)
    return f"e2e-{PID}-{serial}-a", f"e2e-{PID}-{serial}-b"


def new_manager(net: network.NodeNetwork, tmp_path: Path) -> network.NetworkManager:
    manager = network.NetworkManager(net, tmp_path / "state")
    manager.ensure_bridge()
    return manager


def test_instances_reach_each_other_and_leave_nothing_behind(
    node_net: network.NodeNetwork, ids: tuple[str, str], tmp_path: Path
) -> None:
    net = node_net
    manager = new_manager(net, tmp_path)
    manager.ensure_bridge()  # idempotent
    a, b = manager.attach(ids[0]), manager.attach(ids[1])

    assert a.address != b.address
    assert a.address in net.node_prefix and b.address in net.node_prefix
    assert a.prefix_len == 64
    assert len(a.host_veth) <= 15 and a.netns.parent == network.NETNS_DIR
    assert manager.attach(ids[0]) == a
    assert sorted(bridge_ports(net.bridge)) == sorted([a.host_veth, b.host_veth])
    assert reaches(a.netns.name, b)
    assert reaches(b.netns.name, a)
    assert reaches(None, a)

    # Inside: eth0 with the address, no DAD pending, default route via the gateway.
    inside = subprocess.run(
        ["ip", "-n", a.netns.name, "-6", "addr", "show", "dev", "eth0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"{a.address}/64" in inside and "tentative" not in inside
    route = subprocess.run(
        ["ip", "-n", a.netns.name, "-6", "route", "show", "default"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"via {net.gateway} dev eth0" in route

    manager.detach(ids[0])
    manager.detach(ids[1])
    manager.detach(ids[1])  # idempotent
    for attachment in (a, b):
        assert not netns_exists(attachment.netns.name)
        assert not link_exists(attachment.host_veth)
    assert bridge_ports(net.bridge) == []
    assert manager.attachments() == []
    assert '"instances": {}' in (tmp_path / "state" / network.STATE_FILE).read_text()

    manager.remove_bridge()
    assert not link_exists(net.bridge)


def test_a_restarted_manager_adopts_and_removes_orphans(
    node_net: network.NodeNetwork, ids: tuple[str, str], tmp_path: Path
) -> None:
    net = node_net
    first = new_manager(net, tmp_path)
    a, b = first.attach(ids[0]), first.attach(ids[1])

    restarted = new_manager(net, tmp_path)
    assert sorted(restarted.attachments(), key=lambda x: x.address) == sorted(
        [a, b], key=lambda x: x.address
    )
    assert restarted.attach(ids[0]) == a

    assert restarted.cleanup_orphans({ids[0]}) == [ids[1]]
    assert not netns_exists(b.netns.name) and not link_exists(b.host_veth)
    assert restarted.attachments() == [a]
    assert reaches(None, a)
    # A new instance does not get the address just released.
    assert restarted.attach(f"{ids[1]}-new").address not in {a.address, b.address}


def test_an_interrupted_setup_is_completed_with_the_same_address(
    node_net: network.NodeNetwork, ids: tuple[str, str], tmp_path: Path
) -> None:
    net = node_net
    manager = new_manager(net, tmp_path)
    a = manager.attach(ids[0])
    # The host veth vanishes (and its peer with it): what a crash between steps can leave.
    subprocess.run(["ip", "link", "del", "dev", a.host_veth], check=True)
    assert manager.attachments() == []

    assert manager.attach(ids[0]) == a
    assert reaches(None, a)


def test_veths_unknown_to_a_lost_state_file_are_cleaned(
    node_net: network.NodeNetwork, ids: tuple[str, str], tmp_path: Path
) -> None:
    net = node_net
    a = new_manager(net, tmp_path).attach(ids[0])
    (tmp_path / "state" / network.STATE_FILE).unlink()

    manager = new_manager(net, tmp_path)
    assert manager.attachments() == []
    assert manager.cleanup_orphans(set()) == [a.host_veth]
    assert not netns_exists(a.netns.name) and not link_exists(a.host_veth)
    assert bridge_ports(net.bridge) == []


def test_instances_on_two_bridges_are_routed_without_host_wide_forwarding(
    node_net: network.NodeNetwork, ids: tuple[str, str], tmp_path: Path
) -> None:
    all_forwarding = Path("/proc/sys/net/ipv6/conf/all/forwarding").read_text().strip()
    if all_forwarding != "1" and not Path("/proc/sys/net/ipv6/conf/lo/force_forwarding").exists():
        pytest.skip("this kernel has no per-interface force_forwarding (6.17+)")
    serial = next(_serial)
    other_net = network.NodeNetwork.for_prefix(
        network.node_prefix(CLUSTER, serial), cluster_prefix=CLUSTER, bridge=f"hme{PID}{serial}"
    )
    try:
        here = new_manager(node_net, tmp_path).attach(ids[0])
        there = new_manager(other_net, tmp_path / "other").attach(ids[1])
        # The packet leaves one bridge and is routed by the host into the other one.
        assert reaches(here.netns.name, there)
        assert reaches(there.netns.name, here)
    finally:
        _force_clean(other_net, tmp_path / "other" / "state")
    assert Path("/proc/sys/net/ipv6/conf/all/forwarding").read_text().strip() == all_forwarding


def test_the_bridge_holds_the_gateway_and_ignores_router_advertisements(
    node_net: network.NodeNetwork, tmp_path: Path
) -> None:
    net = node_net
    new_manager(net, tmp_path)
    shown = subprocess.run(
        ["ip", "-6", "addr", "show", "dev", net.bridge], capture_output=True, text=True, check=True
    ).stdout
    assert f"{net.gateway}/64" in shown
    conf = Path("/proc/sys/net/ipv6/conf", net.bridge)
    assert (conf / "accept_ra").read_text().strip() == "0"
    assert (conf / "forwarding").read_text().strip() == "1"
