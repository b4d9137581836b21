"""Network planning and its refusals, without QEMU: MACs, bridges, static IPs, forwards.

The pure planner is tested directly; the refusals also go through the API, where
each one must be a 4xx in our format that leaves no VM behind.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypermachine.api import Services
from hypermachine.config import BridgeConfig, ConfigError, Settings, load_settings
from hypermachine.errors import AddressInUse, PortInUse, Unsupported, ValidationFailed
from hypermachine.hypervisor.devices import network, passt
from hypermachine.hypervisor.devices.network import NetworkConfig, kernel_ip_param, nic, plan
from hypermachine.hypervisor.qemu.argv import nic_args
from hypermachine.models import NetworkSpec, Vm, VmState
from hypermachine.store import VmQuery
from support import make_settings
from testnet import ScratchBridge, scratch_bridge

BRIDGE = BridgeConfig(
    name="hmtest0",
    subnet=ipaddress.IPv4Network("198.18.7.0/24"),
    gateway=ipaddress.IPv4Address("198.18.7.1"),
)
CONFIG = NetworkConfig(bridges=(BRIDGE,))
UUID = "0b6c1a9e-7d7e-4b8e-9a53-1d2f3e4a5b6c"


def planned(spec: dict[str, Any], others: list[Vm] | None = None, **ids: str) -> Vm:
    """A VM record as the manager would store it after planning ``spec``."""
    vm_id, vm_uuid = ids.get("vm_id", "vm-0b6c1a9e7d7e"), ids.get("vm_uuid", UUID)
    resolved, info = plan(NetworkSpec(**spec), vm_id, vm_uuid, CONFIG, others or [])
    now = datetime.now(UTC)
    return Vm(
        id=vm_id,
        uuid=vm_uuid,
        name=vm_id,
        image="tiny",
        network=resolved,
        network_info=info,
        state=VmState.STOPPED,
        created_at=now,
        updated_at=now,
    )


def other(n: int, spec: dict[str, Any]) -> Vm:
    return planned(
        spec, vm_id=f"vm-00000000000{n}", vm_uuid=f"00000000-0000-4000-8000-00000000000{n}"
    )


# -- planning -------------------------------------------------------------------


def test_nat_defaults_report_the_user_network() -> None:
    vm = planned({"type": "nat", "ports": [{"host": 2222, "guest": 22}]})
    assert vm.network.mac == network.mac_address(UUID)
    info = vm.network_info
    assert info is not None
    assert (info.ip, info.gateway, info.dns) == ("10.0.2.15/24", "10.0.2.2", ["10.0.2.3"])
    assert [f.model_dump() for f in info.forwards] == [
        {"protocol": "tcp", "host_address": "127.0.0.1", "host_port": 2222, "guest_port": 22}
    ]


def test_nat_netdev_is_a_stream_to_passt() -> None:
    vm = planned({"ports": [{"host": 2222, "guest": 22}]})
    argv = nic_args(nic(vm, nic_fd=9))
    assert json.loads(argv[1]) == {
        "type": "stream",
        "id": "net0",
        "server": False,
        "addr": {"type": "fd", "str": "9"},
    }
    assert json.loads(argv[3])["mac"] == vm.network.mac
    with pytest.raises(ValueError):
        nic_args(nic(vm))  # no passt socket: no NIC that would silently have no network


def test_passt_keeps_the_guest_off_the_host_and_binds_forwards_on_the_forward_address() -> None:
    vm = planned(
        {"ports": [{"host": 2222, "guest": 22}, {"host": 5353, "guest": 53, "protocol": "udp"}]}
    )
    assert vm.network_info is not None
    args = passt.argv("passt", vm.network_info, guest_fd=5, ready_fd=6)
    assert "--no-map-gw" in args and "--ipv4-only" in args
    assert args[args.index("--fd") + 1] == "5" and args[args.index("--pid") + 1] == "/dev/fd/6"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--tcp-ports"] == ["127.0.0.1/2222:22"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--udp-ports"] == ["127.0.0.1/5353:53"]
    assert args[args.index("--address") + 1 :][:5] == [
        "10.0.2.15", "--netmask", "24", "--gateway", "10.0.2.2"
    ]  # fmt: skip
    assert args[args.index("--dns-forward") + 1] == "10.0.2.3"


def test_passt_without_forwards_forwards_nothing() -> None:
    vm = planned({"type": "nat"})
    assert vm.network_info is not None
    args = passt.argv("passt", vm.network_info, guest_fd=5, ready_fd=6)
    # passt would otherwise mirror TCP forwards to UDP; "none" for both, explicitly.
    assert args[args.index("--tcp-ports") + 1] == "none"
    assert args[args.index("--udp-ports") + 1] == "none"


def test_bridge_netdev_is_a_server_made_tap() -> None:
    vm = planned({"type": "bridge", "ip": "198.18.7.10"})
    assert vm.network.bridge == "hmtest0" and vm.network.ip == "198.18.7.10/24"
    assert json.loads(nic_args(nic(vm, nic_fd=7))[1]) == {"type": "tap", "id": "net0", "fd": "7"}
    with pytest.raises(ValueError, match="descriptor of its tap"):
        nic_args(nic(vm))
    assert kernel_ip_param(vm) == "ip=198.18.7.10::198.18.7.1:255.255.255.0::eth0:off"


def test_nat_guests_get_the_user_network_address_as_ip_param() -> None:
    vm = planned({"type": "nat"})
    assert kernel_ip_param(vm) == "ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off:10.0.2.3"


def test_bridge_without_ip_leaves_the_guest_to_configure_itself() -> None:
    vm = planned({"type": "bridge"})
    assert vm.network_info is not None and vm.network_info.ip is None
    assert kernel_ip_param(vm) is None


def test_none_has_no_nic() -> None:
    vm = planned({"type": "none"})
    assert nic_args(nic(vm)) == [] and kernel_ip_param(vm) is None


def test_tap_names_fit_ifnamsiz() -> None:
    assert len(network.tap_name("vm-0123456789ab")) == 15


def test_explicit_mac_is_normalised_and_kept() -> None:
    vm = planned({"type": "nat", "mac": "52:54:00:AB:cd:01"})
    assert vm.network.mac == "52:54:00:ab:cd:01"


def test_derived_mac_skips_one_already_taken() -> None:
    first = other(1, {"type": "nat", "mac": network.mac_address(UUID)})
    vm = planned({"type": "nat"}, [first])
    assert vm.network.mac == network.mac_address(UUID, 1)


@pytest.mark.parametrize(
    ("spec", "error", "others"),
    [
        ({"type": "nat", "mac": "52:54:00:00:00:01"}, AddressInUse, [{"mac": "52:54:00:00:00:01"}]),
        ({"type": "bridge", "ip": "198.18.7.10"}, AddressInUse,
         [{"type": "bridge", "ip": "198.18.7.10/24"}]),
        ({"ports": [{"host": 2222, "guest": 22}]}, PortInUse,
         [{"ports": [{"host": 2222, "guest": 80}]}]),
        ({"type": "bridge", "ip": "198.18.8.10"}, ValidationFailed, []),
        ({"type": "bridge", "ip": "198.18.7.0"}, ValidationFailed, []),
        ({"type": "bridge", "ip": "198.18.7.255"}, ValidationFailed, []),
        ({"type": "bridge", "ip": "198.18.7.1"}, ValidationFailed, []),
        ({"type": "bridge", "ip": "198.18.7.10/16"}, ValidationFailed, []),
        ({"type": "bridge", "bridge": "br-other"}, ValidationFailed, []),
        ({"ports": [{"host": 80, "guest": 80}]}, ValidationFailed, []),
    ],
)  # fmt: skip
def test_refusals(spec: dict[str, Any], error: type[Exception], others: list[Any]) -> None:
    existing = [other(i, o) for i, o in enumerate(others)]
    with pytest.raises(error):
        planned(spec, existing)


def test_same_port_udp_and_tcp_do_not_conflict() -> None:
    first = other(1, {"ports": [{"host": 2222, "guest": 22, "protocol": "udp"}]})
    planned({"ports": [{"host": 2222, "guest": 22}]}, [first])


def test_no_bridge_configured_is_a_host_capability() -> None:
    with pytest.raises(Unsupported):
        plan(NetworkSpec(type="bridge"), "vm-1", UUID, NetworkConfig(), [])


@given(st.lists(st.integers(1024, 65535), min_size=1, max_size=8, unique=True))
def test_every_forward_becomes_one_passt_spec(ports: list[int]) -> None:
    vm = planned({"ports": [{"host": p, "guest": p} for p in ports]})
    assert vm.network_info is not None
    args = passt.argv("passt", vm.network_info, guest_fd=5, ready_fd=6)
    specs = [args[i + 1] for i, a in enumerate(args) if a == "--tcp-ports"]
    assert specs == [f"127.0.0.1/{p}:{p}" for p in ports]


# -- configuration ----------------------------------------------------------------


def test_bridges_from_toml_and_env(tmp_path: Path) -> None:
    toml = tmp_path / "hm.toml"
    toml.write_text('[bridges.br0]\nsubnet = "192.0.2.0/24"\ngateway = "192.0.2.1"\n')
    from_file = load_settings(config_file=toml, environ={})
    assert from_file.bridges == (
        BridgeConfig(
            "br0", ipaddress.IPv4Network("192.0.2.0/24"), ipaddress.IPv4Address("192.0.2.1")
        ),
    )
    from_env = load_settings(environ={"HM_BRIDGES": '{"br0": {"subnet": "192.0.2.0/24"}}'})
    assert from_env.bridges[0].gateway is None


@pytest.mark.parametrize(
    "raw",
    [
        {"br0": {"subnet": "192.0.2.5/24"}},  # host bits set
        {"br0": {"subnet": "192.0.2.0/24", "gateway": "192.0.3.1"}},
        {"br0": {"subnet": "192.0.2.0/24", "script": "/x"}},
        {"a-bridge-name-too-long": {"subnet": "192.0.2.0/24"}},
        {"br0": "192.0.2.0/24"},
    ],
)
def test_bad_bridge_config_is_rejected(raw: object) -> None:
    with pytest.raises(ConfigError):
        load_settings(environ={}, overrides={"bridges": raw})


def test_forward_settings_are_checked() -> None:
    with pytest.raises(ConfigError):
        load_settings(environ={"HM_FORWARD_ADDRESS": "localhost; rm"})
    with pytest.raises(ConfigError):
        load_settings(environ={"HM_FORWARD_PORT_MIN": "70000"})


# -- through the API ------------------------------------------------------------------


@pytest.fixture
def bridge() -> Iterator[ScratchBridge]:
    with scratch_bridge() as made:
        yield made


@pytest.fixture
def settings(data_dir: Path, compile_cache: Path, bridge: ScratchBridge) -> Settings:
    return make_settings(data_dir, compile_cache, bridges={bridge.name: bridge.config()})


async def create(client: Any, name: str, network: dict[str, Any]) -> tuple[int, Any]:
    body = {"name": name, "image": "tiny", "memory_mb": 512, "disk_gb": 1, "network": network}
    response = await client.post("/api/v1/vms", json=body)
    return response.status_code, await response.get_json()


async def test_api_reports_the_plan_and_refuses_conflicts(
    client: Any, services: Services, bridge: ScratchBridge
) -> None:
    status, vm = await create(client, "a", {"type": "bridge", "ip": bridge.host(10)})
    assert status == 201, vm
    assert vm["network"]["bridge"] == bridge.name
    assert vm["network_info"]["ip"] == f"{bridge.host(10)}/24"
    assert vm["network_info"]["tap"] == network.tap_name(vm["id"])

    refusals = [
        ({"type": "bridge", "ip": bridge.host(10)}, 409, "ADDRESS_IN_USE"),
        ({"type": "bridge", "mac": vm["network"]["mac"]}, 409, "ADDRESS_IN_USE"),
        ({"type": "bridge", "ip": bridge.host(1)}, 400, "VALIDATION_ERROR"),  # the gateway
        ({"type": "bridge", "ip": "203.0.113.9"}, 400, "VALIDATION_ERROR"),
        ({"type": "bridge", "bridge": "docker0"}, 400, "VALIDATION_ERROR"),
        ({"type": "nat", "ports": [{"host": 22, "guest": 22}]}, 400, "VALIDATION_ERROR"),
        ({"type": "bridge", "ports": [{"host": 2222, "guest": 22}]}, 400, "VALIDATION_ERROR"),
        ({"type": "nat", "mac": "01:00:5e:00:00:01"}, 400, "VALIDATION_ERROR"),  # multicast
    ]
    for spec, want_status, want_code in refusals:
        status, body = await create(client, "b", spec)
        assert (status, body["error"]["code"]) == (want_status, want_code), (spec, body)
    assert [v.name for v in services.manager.list()[0]] == ["a"]


async def test_api_refuses_a_port_bound_on_the_host(client: Any, services: Services) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        status, body = await create(client, "c", {"ports": [{"host": port, "guest": 22}]})
    assert (status, body["error"]["code"]) == (409, "PORT_IN_USE")
    status, body = await create(client, "c", {"ports": [{"host": port, "guest": 22}]})
    assert status == 201, body
    status, body = await create(client, "d", {"ports": [{"host": port, "guest": 80}]})
    assert (status, body["error"]["code"]) == (409, "PORT_IN_USE")
    assert body["error"]["details"]["vm_id"] == services.manager.list(VmQuery(name="c"))[0][0].id


async def test_api_refuses_a_bridge_that_does_not_exist(
    client: Any, services: Services, bridge: ScratchBridge
) -> None:
    bridge.delete()
    status, body = await create(client, "e", {"type": "bridge"})
    assert (status, body["error"]["code"]) == (409, "CAPABILITY_UNAVAILABLE")
    assert "does not exist" in body["error"]["details"]["unsupported"]["network.bridge"]
