"""Networks for real: tiny guests under QEMU reached through a port forward and a bridge.

* nat: a forwarded host port on 127.0.0.1 reaches busybox httpd in the guest; the
  guest reaches a stand-in for the outside world (a netns) but neither the API nor
  a listener on the host's loopback nor one on a host address;
* bridge: two guests with static IPs on a scratch bridge answer pings from a peer
  in the test's own network namespace and reach each other; one sending from its
  peer's IP or MAC gets nothing through; their taps (and anti-spoofing tables) exist
  while they run and are gone once QEMU has exited, after delete, and after a
  restarted server finds the QEMU gone.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest
import trio

from guestconsole import console, console_text, wait_console
from hypermachine.api import Services
from hypermachine.config import Settings
from hypermachine.hypervisor.devices.hostnet import interface_exists, port_free
from hypermachine.models import CreateVmRequest, NetworkSpec, VmState
from hypermachine.server import open_services
from livehttp import served
from support import (
    fetch_when_served,
    make_settings,
    process_gone,
    remove_all_vms,
    wait_until,
    wait_until_read,
)
from testnet import (
    ScratchBridge,
    ScratchOutside,
    recorder,
    scratch_bridge,
    scratch_outside,
    sniffer,
)

pytestmark = pytest.mark.qemu

BOOT_S = 120.0  # TCG on a shared 2-core host
AGENT_WAIT = 120


@pytest.fixture
def bridge() -> Iterator[ScratchBridge]:
    with scratch_bridge(peer=True) as made:
        yield made


@pytest.fixture
def settings(data_dir: Path, compile_cache: Path, bridge: ScratchBridge) -> Settings:
    return make_settings(data_dir, compile_cache, bridges={bridge.name: bridge.config()})


@pytest.fixture
def outside() -> Iterator[ScratchOutside]:
    with scratch_outside() as made:
        yield made


async def guest_sh(client: Any, vm_id: str, script: str) -> dict[str, Any]:
    """Run ``sh -c script`` in the guest through qemu-ga; its result."""
    body = {"command": ["sh", "-c", script], "timeout_s": 60}
    response = await client.post(f"/api/v1/vms/{vm_id}/exec?wait_agent={AGENT_WAIT}", json=body)
    got = await response.get_json()
    assert response.status_code == 200 and got["status"] == "exited", got
    return dict(got)


def wget(url: str) -> str:
    """busybox wget, bounded (its own ``-T`` crashes the tiny image's busybox)."""
    return f"timeout 10 wget -q -O - {url}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def boot(client: Any, services: Services, name: str, network: dict[str, Any]) -> Any:
    body = {"name": name, "image": "tiny", "memory_mb": 512, "disk_gb": 1, "network": network}
    response = await client.post("/api/v1/vms", json={**body, "start": True, "wait": True})
    vm = await response.get_json()
    assert response.status_code == 201 and vm["state"] == "running", vm
    await wait_console(services, vm["id"], "HM-READY tiny", timeout=BOOT_S)
    return vm


async def test_nat_guest_is_forwarded_to_and_reaches_the_outside_but_not_the_host(
    client: Any, services: Services, outside: ScratchOutside, tmp_path: Path
) -> None:
    port = free_port()
    vm = await boot(client, services, "contained", {"ports": [{"host": port, "guest": 8080}]})
    assert vm["network_info"]["forwards"] == [
        {"protocol": "tcp", "host_address": "127.0.0.1", "host_port": port, "guest_port": 8080}
    ]
    assert "HM-NET eth0 10.0.2.15" in console_text(services, vm["id"])
    async with console(services, vm["id"]) as con:  # a service started from the console
        await con.type(
            "mkdir -p /www && echo hm-forward-ok > /www/index.html && "
            "httpd -p 8080 -h /www && echo HTTPD''-UP"
        )
        await wait_console(services, vm["id"], "HTTPD-UP", timeout=60)
    body = await fetch_when_served(f"http://127.0.0.1:{port}/index.html", timeout=60)
    assert body == b"hm-forward-ok\n"

    async with served(services) as api:
        api_port = urlsplit(api).port
        with (
            recorder("127.0.0.1", free_port(), tmp_path, name="loopback") as loopback,
            recorder(outside.near, free_port(), tmp_path, name="host-address") as host_address,
            recorder(outside.far, 8080, tmp_path, netns=outside.netns, name="world") as world,
        ):
            got = await guest_sh(client, vm["id"], wget(f"{world.url}/from-guest"))
            assert (got["exit_code"], got["stdout"]) == (0, "world\n"), got
            assert [line.split()[2] for line in world.seen()] == ["/from-guest"]

            gateway = "10.0.2.2"  # what slirp mapped to the host's loopback
            for url in (
                f"http://{gateway}:{api_port}/api/v1/vms",
                f"http://{gateway}:{loopback.url.rsplit(':', 1)[1]}/via-gateway",
                f"{host_address.url}/via-host-address",
            ):
                got = await guest_sh(client, vm["id"], wget(url))
                assert got["exit_code"] != 0 and got["stdout"] == "", (url, got)
            assert loopback.seen() == [] and host_address.seen() == []
    # The forward still serves after the refusals, and ends with the VM.
    body = await fetch_when_served(f"http://127.0.0.1:{port}/index.html", timeout=10)
    assert body == b"hm-forward-ok\n"
    stopped = await client.post(f"/api/v1/vms/{vm['id']}/stop", json={"force": True, "wait": True})
    assert (await stopped.get_json())["state"] == "stopped"
    assert port_free("127.0.0.1", port, "tcp"), "the VM's forward outlived it"


def tap_master(tap: str) -> str | None:
    try:
        return os.path.basename(os.readlink(f"/sys/class/net/{tap}/master"))
    except OSError:
        return None


def set_mac(mac: str) -> str:
    return f"ifconfig eth0 down && ifconfig eth0 hw ether {mac} && ifconfig eth0 up"


def set_ip(address: str) -> str:
    return f"ifconfig eth0 {address} netmask 255.255.255.0"


async def _static_ips_answer(services: Services, bridge: ScratchBridge, a: Any, b: Any) -> None:
    """Each guest answers a ping from the peer namespace on its static IP, with the MAC
    the server chose, and the two reach each other."""
    for vm in (a, b):
        address = vm["network"]["ip"].split("/")[0]
        await wait_console(services, vm["id"], f"HM-NET eth0 {address}")
        await wait_until(
            partial(bridge.ping, address),
            timeout=60,
            what=f"{address} to answer ping from the peer namespace",
        )
    a_ip, b_ip = (vm["network"]["ip"].split("/")[0] for vm in (a, b))
    neighbours = bridge.in_netns("ip", "neigh", "show", a_ip).stdout
    assert a["network"]["mac"] in neighbours
    async with console(services, a["id"]) as con:
        await con.type(f"ping -c 2 -W 2 {b_ip} && echo PING''-OK")
        await wait_console(services, a["id"], "PING-OK", timeout=60)


async def _spoofing_gets_nothing_through(
    client: Any, bridge: ScratchBridge, tmp_path: Path, a: Any, b: Any
) -> None:
    """a sending from b's IP or b's MAC reaches nobody; honest, it reaches b and the peer."""
    a_ip, b_ip, peer = bridge.host(10), bridge.host(11), bridge.host(1)
    a_mac, b_mac = a["network"]["mac"], b["network"]["mac"]
    got = await guest_sh(  # a second call finds its httpd serving already
        client, b["id"], "mkdir -p /www && echo b > /www/i && (httpd -p 8080 -h /www; true)"
    )
    assert got["exit_code"] == 0, got
    assert bridge.netns is not None and bridge.peer_iface is not None

    with sniffer(bridge.netns, bridge.peer_iface, tmp_path) as wire:
        # Unspoofed, the guests talk, and the peer sees a's packets as a's.
        got = await guest_sh(client, a["id"], wget(f"http://{b_ip}:8080/i"))
        assert (got["exit_code"], got["stdout"]) == (0, "b\n"), got
        await guest_sh(client, a["id"], wget(f"http://{peer}:9001/"))
        await wait_until(lambda: f"{a_mac} {a_ip} 9001" in wire.seen(), what="a's packets")

        # From b's IP (then back), and from b's MAC (then back): nothing on the wire.
        spoof_ip = f"{set_ip(b_ip)}; {wget(f'http://{peer}:9002/')}; {set_ip(a_ip)}"
        spoof_mac = f"{set_mac(b_mac)}; {wget(f'http://{peer}:9003/')}; {set_mac(a_mac)}"
        for script in (spoof_ip, spoof_mac):
            got = await guest_sh(client, a["id"], script)
            assert got["stdout"] == "", got

        # Honest again: seen. Packets arrive in order, so nothing spoofed came before.
        await guest_sh(client, a["id"], wget(f"http://{peer}:9004/"))
        await wait_until(lambda: f"{a_mac} {a_ip} 9004" in wire.seen(), what="a again")
        ports = {line.split()[2] for line in wire.seen()}
        assert ports.isdisjoint({"9002", "9003"}), wire.seen()
        assert {line.split()[0] for line in wire.seen()} == {a_mac}, wire.seen()


def _nft_table_exists(table: str) -> bool:
    listed = subprocess.run(["nft", "list", "table", "bridge", table], capture_output=True)
    return listed.returncode == 0


async def test_two_bridge_guests_on_static_ips_cannot_spoof_each_other(
    client: Any, services: Services, bridge: ScratchBridge, tmp_path: Path
) -> None:
    a = await boot(client, services, "honest", {"type": "bridge", "ip": bridge.host(10)})
    b = await boot(client, services, "victim", {"type": "bridge", "ip": bridge.host(11)})
    taps = [a["network_info"]["tap"], b["network_info"]["tap"]]
    assert [tap_master(t) for t in taps] == [bridge.name, bridge.name]
    await _static_ips_answer(services, bridge, a, b)
    await _spoofing_gets_nothing_through(client, bridge, tmp_path, a, b)
    table = f"hm_{a['id'].removeprefix('vm-')}"
    assert _nft_table_exists(table)

    # Live-migrated to a fresh QEMU: a tap of its own beside the old one, guarded the
    # same; once it runs, the old tap and its table are gone, and spoofing still fails.
    moved = await client.post(f"/api/v1/vms/{a['id']}/migrate", json={})
    assert moved.status_code == 200, await moved.get_json()
    a = (await moved.get_json())["vm"]
    assert a["network_info"]["tap"] == f"hmu{a['id'].removeprefix('vm-')}"
    assert tap_master(a["network_info"]["tap"]) == bridge.name
    assert not interface_exists(taps[0]) and not _nft_table_exists(table)
    taps[0], table = a["network_info"]["tap"], f"{table}_u"
    assert _nft_table_exists(table)
    await wait_until(lambda: bridge.ping(bridge.host(10)), timeout=60, what="ping after moving")
    await _spoofing_gets_nothing_through(client, bridge, tmp_path, a, b)

    for vm in (a, b):
        stop = await client.post(f"/api/v1/vms/{vm['id']}/stop", json={"force": True, "wait": True})
        assert (await stop.get_json())["state"] == "stopped"
    assert not any(interface_exists(t) for t in taps), "a tap outlived its QEMU"

    # Started again, the VM gets a fresh tap; deleting it removes that and its table.
    again = await client.post(f"/api/v1/vms/{a['id']}/start", json={"wait": True})
    assert (await again.get_json())["state"] == "running"
    assert tap_master(taps[0]) == bridge.name
    assert _nft_table_exists(table)
    assert (await client.delete(f"/api/v1/vms/{a['id']}?force=true")).status_code == 204
    assert not interface_exists(taps[0])
    assert not _nft_table_exists(table), "the VM's anti-spoofing table outlived it"


async def test_tap_of_a_vm_that_died_while_the_server_was_away_is_removed(
    settings: Settings, tiny: Path, bridge: ScratchBridge
) -> None:
    request = CreateVmRequest(
        name="lost",
        image="tiny",
        memory_mb=512,
        disk_gb=1,
        network=NetworkSpec(type="bridge", ip=bridge.host(20)),
        start=True,
    )
    async with open_services(settings) as svc:
        created = await svc.manager.create(request)
        vm = await svc.manager.wait_for(created.vm.id, {VmState.RUNNING}, BOOT_S)
    pid = vm.pid
    assert vm.network_info is not None and vm.network_info.tap is not None and pid
    tap = vm.network_info.tap
    assert interface_exists(tap), "QEMU and its tap outlive the server"
    psutil.Process(pid).kill()
    await wait_until(lambda: process_gone(pid), what="QEMU to die")

    async with open_services(settings) as svc:
        try:
            assert svc.manager.get(vm.id).state is VmState.STOPPED
            assert not interface_exists(tap)
        finally:
            with trio.CancelScope(shield=True):
                await remove_all_vms(svc)


async def guest_identity(client: Any, vm_id: str) -> str:
    """What the guest's eth0 says it is: "MAC ADDRESS/PREFIX default-gateway"."""
    got = await guest_sh(
        client,
        vm_id,
        "echo $(cat /sys/class/net/eth0/address) "
        "$(ip -4 -o addr show dev eth0 | awk '{print $4}') "
        "$(ip route | awk '/^default/ {print $3}')",
    )
    return str(got["stdout"]).strip()


async def test_fork_children_on_a_bridge_get_their_own_address_and_mac(
    client: Any, services: Services, bridge: ScratchBridge, tmp_path: Path
) -> None:
    """A memory fork of a static-IP bridge guest: refused without new addresses; with
    them, each child gets its own MAC, address and anti-spoofing table, its guest takes
    them (default route kept), the peer reaches all three, and a child sending as the
    parent (the identity its RAM came with) gets nothing through."""
    parent_ip, peer = bridge.host(20), bridge.host(1)
    parent = await boot(client, services, "parent", {"type": "bridge", "ip": parent_ip})
    await wait_console(services, parent["id"], f"HM-NET eth0 {parent_ip}")
    snap = await client.post(
        f"/api/v1/vms/{parent['id']}/snapshots", json={"name": "s1", "memory": True}
    )
    assert snap.status_code == 201, await snap.get_json()
    fork_url = f"/api/v1/vms/{parent['id']}/fork"

    for ips in (None, [bridge.host(21)], [parent_ip, bridge.host(21)],
                [bridge.host(21), f"{bridge.host(21)}/24"]):  # fmt: skip
        body = {"name": "twin", "snapshot": "s1", "count": 2, "ips": ips}
        refused = await client.post(fork_url, json=body)
        got = await refused.get_json()
        assert (refused.status_code, got["error"]["code"]) == (409, "ADDRESS_IN_USE"), (ips, got)
    assert [vm.name for vm in services.manager.list()[0]] == ["parent"]  # none half-made

    child_ips = [bridge.host(21), bridge.host(22)]
    body = {"name": "child", "snapshot": "s1", "count": 2, "ips": child_ips, "wait": True}
    forked = await client.post(fork_url, json=body)
    children = (await forked.get_json())["vms"]
    assert forked.status_code == 201 and [c["state"] for c in children] == ["running"] * 2
    gateway = bridge.host(1)
    for child, ip in zip(children, child_ips, strict=True):
        info = child["network_info"]
        assert (info["ip"], info["gateway"], info["bridge"]) == (f"{ip}/24", gateway, bridge.name)
        assert info["mac"] != parent["network"]["mac"]
        table = subprocess.run(
            ["nft", "list", "table", "bridge", f"hm_{child['id'].removeprefix('vm-')}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        assert f"ether saddr != {info['mac']} drop" in table and f"saddr != {ip} drop" in table
        expected = f"{info['mac']} {ip}/24 {gateway}"
        await wait_until_read(partial(guest_identity, client, child["id"]), expected)
        machine = services.manager._machine(child["id"])  # a bridge's switches learn the MAC
        parameters: Any = await machine.execute("query-migrate-parameters")
        assert parameters["announce-rounds"] == 5
    assert len({c["network_info"]["mac"] for c in children}) == 2
    for address in (parent_ip, *child_ips):
        await wait_until(partial(bridge.ping, address), timeout=60, what=f"{address} to answer")
    for child, ip in zip(children, child_ips, strict=True):
        neighbours = bridge.in_netns("ip", "neigh", "show", ip).stdout
        assert child["network_info"]["mac"] in neighbours, neighbours

    first = children[0]
    first_ip, first_mac = child_ips[0], first["network_info"]["mac"]
    parent_mac = parent["network"]["mac"]
    assert bridge.netns is not None and bridge.peer_iface is not None
    with sniffer(bridge.netns, bridge.peer_iface, tmp_path) as wire:
        await guest_sh(client, first["id"], wget(f"http://{peer}:9011/"))
        await wait_until(lambda: f"{first_mac} {first_ip} 9011" in wire.seen(), what="child")
        as_parent = (
            f"{set_mac(parent_mac)}; {set_ip(parent_ip)}; {wget(f'http://{peer}:9012/')}; "
            f"{set_mac(first_mac)}; {set_ip(first_ip)}"
        )
        await guest_sh(client, first["id"], as_parent)
        await guest_sh(client, first["id"], wget(f"http://{peer}:9013/"))
        await wait_until(lambda: f"{first_mac} {first_ip} 9013" in wire.seen(), what="again")
        assert "9012" not in {line.split()[2] for line in wire.seen()}, wire.seen()
