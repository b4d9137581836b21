"""What a node says about itself in the cluster, from its manager (pure but for reads)."""

from __future__ import annotations

import os

from ..hypervisor.manager import Manager
from ..models import FirmwareKind, FreeDevice, HostDevices, Node, NodeState
from ..states import LIVE_STATES
from ..store import utcnow

__all__ = ["describe"]


def _capabilities(manager: Manager) -> list[str]:
    found = ["kvm"] if manager.host.accelerator == "kvm" else []
    caps = manager.host.capabilities
    if caps is not None:
        found += [name for name, cap in caps.capabilities if cap.available]
    return [*found, "shared_storage"] if manager.shared_storage else found


def _firmware(manager: Manager) -> list[FirmwareKind]:
    caps = manager.host.capabilities
    kinds: set[FirmwareKind] = {"bios"}  # SeaBIOS is built into QEMU
    if caps is not None:
        kinds.update(found.kind for found in caps.firmware)
    return sorted(kinds)


def _free_devices(host: HostDevices) -> list[FreeDevice]:
    """The devices a new VM could get: passable, none of their IOMMU group held (a VM
    holding a GPU holds its whole group)."""
    held = {device.address for device in host.devices if device.in_use_by is not None}
    return [
        FreeDevice(address=device.address, kind=device.kind)
        for device in host.devices
        if device.passthrough.possible and not held & {device.address, *device.iommu_group_members}
    ]


async def describe(manager: Manager, *, name: str, url: str) -> Node:
    """This node as it is now: capabilities, firmware, capacity, free GPUs and what
    its VMs hold."""
    budget = manager.budget
    vms = manager.local_vms()
    live = [vm for vm in vms if vm.state in LIVE_STATES]
    caps = manager.host.capabilities
    memory_mb = caps.memory_bytes // 2**20 if caps is not None else budget.memory_mb
    devices = await manager.host_devices()
    return Node(
        name=name,
        url=url,
        state=NodeState.UP,
        accelerator=manager.host.accelerator,
        qemu_version=manager.host.qemu_version,
        capabilities=_capabilities(manager),
        cpus=caps.cpu_count if caps is not None else os.cpu_count() or 1,
        memory_mb=memory_mb,
        free_vcpus=max(0, budget.vcpus - sum(vm.cpus for vm in live)),
        free_memory_mb=max(0, budget.memory_mb - sum(vm.memory_mb for vm in live)),
        firmware=_firmware(manager),
        free_devices=_free_devices(devices),
        vgpu_types=devices.mdev_types,
        vms=len(vms),
        live_vms=len(live),
        updated_at=utcnow(),
    )
