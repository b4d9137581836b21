"""Network planning: a VM's network spec + the server's config -> what QEMU and the guest get.

Pure: no I/O. At create, :func:`plan` fills in what the server chose (MAC, bridge,
address in CIDR form) and describes the result (:class:`NetworkInfo`, reported in
the VM's details); :func:`check_conflicts` refuses a MAC, static IP or forwarded
port another VM already has. At launch, :func:`nic` gives the argv builder the NIC (a
NAT VM's backend is a stream to its passt, :mod:`.passt`; a bridge VM's its tap) and
:func:`kernel_ip_param` the kernel's ``ip=`` for guests booted directly from a
kernel (docs/networking.md).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from ...config import BridgeConfig, Settings
from ...errors import AddressInUse, PortInUse, Unsupported, ValidationFailed
from ...models import ForwardInfo, NetworkInfo, NetworkSpec, Vm
from ..qemu import argv

__all__ = [
    "NAT_DNS",
    "NAT_GATEWAY",
    "NAT_GUEST",
    "NetworkConfig",
    "check_conflicts",
    "kernel_ip_param",
    "mac_address",
    "nic",
    "other_tap",
    "plan",
    "tap_name",
]

# The addresses of QEMU's user-mode network (slirp), kept for NAT guests under passt.
NAT_GUEST = ipaddress.IPv4Interface("10.0.2.15/24")
NAT_GATEWAY = ipaddress.IPv4Address("10.0.2.2")
NAT_DNS = ipaddress.IPv4Address("10.0.2.3")

# The guest's NIC: the kernel's first ethernet device (virtio-net is the only NIC).
_GUEST_IFACE = "eth0"


@dataclass(frozen=True)
class NetworkConfig:
    """The network settings planning needs (a slice of :class:`Settings`)."""

    bridges: tuple[BridgeConfig, ...] = ()
    forward_address: str = "127.0.0.1"
    port_min: int = 1024
    port_max: int = 65535

    @classmethod
    def from_settings(cls, settings: Settings) -> NetworkConfig:
        return cls(
            bridges=settings.bridges,
            forward_address=settings.forward_address,
            port_min=settings.forward_port_min,
            port_max=settings.forward_port_max,
        )

    def bridge(self, name: str | None) -> BridgeConfig:
        """The bridge a VM asked for, or the only one configured.

        Raises:
            Unsupported: no bridge is configured on this server.
            ValidationFailed: the name is not allowed, or several are and none was named.
        """
        allowed = [b.name for b in self.bridges]
        if not self.bridges:
            raise Unsupported(
                "bridge networking needs a host bridge in the server's 'bridges' setting; "
                "none is configured",
                unsupported={"network.type": "no bridge is configured"},
            )
        if name is None:
            if len(self.bridges) > 1:
                raise ValidationFailed("several bridges are allowed; name one", allowed=allowed)
            return self.bridges[0]
        for bridge in self.bridges:
            if bridge.name == name:
                return bridge
        raise ValidationFailed(f"bridge {name!r} is not allowed", allowed=allowed)


def mac_address(vm_uuid: str, nic: int = 0) -> str:
    """A stable locally administered MAC (52:54:00 prefix) derived from the VM."""
    digest = hashlib.sha256(f"{vm_uuid}/{nic}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def tap_name(vm_id: str, *, alternate: bool = False) -> str:
    """The VM's tap device: ``hmt`` + the VM id's 12 hex digits (15 chars, IFNAMSIZ);
    ``alternate``: ``hmu`` + them, the tap a migration's destination opens beside it."""
    return ("hmu" if alternate else "hmt") + vm_id.removeprefix("vm-")[:12]


def other_tap(vm_id: str, current: str | None) -> str:
    """The tap a migration's destination gets: the name the VM's current tap has not
    (on this host both exist until the switch-over; the VM then keeps the new one)."""
    return tap_name(vm_id, alternate=current in (None, tap_name(vm_id)))


def _macs_in_use(others: Iterable[Vm]) -> set[str]:
    return {vm.network.mac for vm in others if vm.network.mac}


def _choose_mac(spec: NetworkSpec, vm_uuid: str, taken: set[str]) -> str:
    """The client's MAC, or the first derived one (index 0, 1, ...) no other VM has."""
    if spec.mac is not None:
        if spec.mac in taken:
            raise AddressInUse(f"MAC {spec.mac} belongs to another VM", field="network.mac")
        return spec.mac
    index = 0
    while (mac := mac_address(vm_uuid, index)) in taken:
        index += 1
    return mac


def _static_ip(raw: str, bridge: BridgeConfig) -> ipaddress.IPv4Interface:
    """The address with the bridge's prefix, checked to be a usable host of its subnet.

    Raises:
        ValidationFailed: outside the subnet, a reserved address, or a different prefix.
    """
    given = ipaddress.IPv4Interface(raw if "/" in raw else f"{raw}/{bridge.subnet.prefixlen}")
    subnet = bridge.subnet
    if given.network.prefixlen != subnet.prefixlen or given.ip not in subnet:
        raise ValidationFailed(
            f"{raw} is not an address of bridge {bridge.name}'s subnet {subnet}",
            field="network.ip",
            subnet=str(subnet),
        )
    reserved = {subnet.network_address: "network", subnet.broadcast_address: "broadcast"}
    if bridge.gateway is not None:
        reserved[bridge.gateway] = "gateway"
    if given.ip in reserved and subnet.prefixlen < 31:
        raise ValidationFailed(
            f"{given.ip} is the subnet's {reserved[given.ip]} address", field="network.ip"
        )
    return given


def _forwards(spec: NetworkSpec, config: NetworkConfig) -> list[ForwardInfo]:
    for port in spec.ports:
        if not config.port_min <= port.host <= config.port_max:
            raise ValidationFailed(
                f"host port {port.host} is outside the allowed range "
                f"{config.port_min}-{config.port_max}",
                field="network.ports",
                allowed=[config.port_min, config.port_max],
            )
    return [
        ForwardInfo(
            protocol=port.protocol,
            host_address=config.forward_address,
            host_port=port.host,
            guest_port=port.guest,
        )
        for port in spec.ports
    ]


def plan(
    spec: NetworkSpec, vm_id: str, vm_uuid: str, config: NetworkConfig, others: Iterable[Vm]
) -> tuple[NetworkSpec, NetworkInfo]:
    """The spec with the server's choices filled in, and the network as reported.

    Raises:
        ValidationFailed, Unsupported, AddressInUse, PortInUse.
    """
    others = list(others)
    if spec.type == "none":
        return spec, NetworkInfo(type="none")
    mac = _choose_mac(spec, vm_uuid, _macs_in_use(others))
    if spec.type == "nat":
        info = NetworkInfo(
            type="nat",
            mac=mac,
            ip=str(NAT_GUEST),
            gateway=str(NAT_GATEWAY),
            dns=[str(NAT_DNS)],
            forwards=_forwards(spec, config),
        )
        resolved = spec.model_copy(update={"mac": mac})
    else:
        bridge = config.bridge(spec.bridge)
        address = _static_ip(spec.ip, bridge) if spec.ip is not None else None
        info = NetworkInfo(
            type="bridge",
            mac=mac,
            ip=str(address) if address else None,
            gateway=str(bridge.gateway) if address and bridge.gateway else None,
            bridge=bridge.name,
            tap=tap_name(vm_id),
        )
        resolved = spec.model_copy(
            update={"mac": mac, "bridge": bridge.name, "ip": info.ip},
        )
    check_conflicts(info, vm_id, others)
    return resolved, info


def check_conflicts(info: NetworkInfo, vm_id: str, others: Iterable[Vm]) -> None:
    """Refuse a static IP on the same bridge or a forwarded port another VM has.

    Raises:
        AddressInUse, PortInUse.
    """
    mine = {(f.protocol, f.host_address, f.host_port) for f in info.forwards}
    for vm in others:
        theirs = vm.network_info
        if vm.id == vm_id or theirs is None:
            continue
        same_bridge = info.type == "bridge" and theirs.bridge == info.bridge
        if same_bridge and info.ip and theirs.ip and _host(theirs.ip) == _host(info.ip):
            raise AddressInUse(
                f"{_host(info.ip)} on bridge {info.bridge} belongs to VM {vm.id}",
                field="network.ip",
                vm_id=vm.id,
            )
        for f in theirs.forwards:
            if (f.protocol, f.host_address, f.host_port) in mine:
                raise PortInUse(
                    f"host port {f.protocol}/{f.host_port} is forwarded to VM {vm.id}",
                    field="network.ports",
                    port=f.host_port,
                    vm_id=vm.id,
                )


def _host(cidr: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Interface(cidr).ip


def _info(vm: Vm) -> NetworkInfo:
    """What :func:`plan` recorded, or (for a VM recorded without it) the spec's defaults."""
    if vm.network_info is not None:
        return vm.network_info
    spec = vm.network
    return NetworkInfo(
        type=spec.type,
        mac=spec.mac or mac_address(vm.uuid),
        bridge=spec.bridge,
        tap=tap_name(vm.id) if spec.type == "bridge" else None,
    )


def nic(vm: Vm, nic_fd: int | None = None) -> argv.Nic | None:
    """The VM's NIC for the argv builder; None for ``none``.

    ``nic_fd`` is the NIC's backend, opened by the server: a NAT VM's connected passt
    socket (passt holds the port forwards), a bridge VM's tap.

    Raises:
        ValueError: a NIC without its descriptor.
    """
    info = _info(vm)
    if info.type == "none":
        return None
    if info.type == "nat":
        if nic_fd is None:
            raise ValueError("a nat NIC needs its passt socket")
        return argv.Nic("stream", nic_fd, info.mac)
    if nic_fd is None:
        raise ValueError("a bridge NIC needs the descriptor of its tap")
    return argv.Nic("tap", nic_fd, info.mac)


def kernel_ip_param(vm: Vm) -> str | None:
    """The kernel's ``ip=client::gateway:netmask::eth0:off[:dns]`` for the guest's address.

    Built only from addresses the server validated; None when the guest has none.
    """
    info = vm.network_info
    if info is None or info.ip is None:
        return None
    address = ipaddress.IPv4Interface(info.ip)
    fields = [
        str(address.ip),
        "",
        info.gateway or "",
        str(address.netmask),
        "",
        _GUEST_IFACE,
        "off",
        *[str(ipaddress.IPv4Address(d)) for d in info.dns[:1]],
    ]
    return "ip=" + ":".join(fields)
