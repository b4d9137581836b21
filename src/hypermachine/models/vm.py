"""A VM as the server reports it: its spec plus what the server chose and measured
(network plan, GPU assignment, guest agent, metrics), and the host's devices."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .base import VmState, _Strict
from .spec import GpuSpec, SnapshotRef, VmSpec

__all__ = [
    "DiskStats",
    "ForwardInfo",
    "GpuAssignment",
    "GuestAgentInfo",
    "HostDevices",
    "MdevType",
    "NetworkInfo",
    "Passthrough",
    "PciDevice",
    "Vm",
    "VmList",
    "VmMetrics",
]


class ForwardInfo(_Strict):
    protocol: Literal["tcp", "udp"]
    host_address: str
    host_port: int
    guest_port: int


class NetworkInfo(_Strict):
    """Where the VM is on the network, as the server set it up."""

    type: Literal["nat", "bridge", "none"]
    mac: str | None = None
    ip: str | None = Field(default=None, description="The guest's address (CIDR), if known.")
    gateway: str | None = None
    dns: list[str] = Field(default_factory=list)
    bridge: str | None = None
    tap: str | None = None
    forwards: list[ForwardInfo] = Field(default_factory=list)


class GpuAssignment(_Strict):
    """Host devices a running VM holds (released when its QEMU exits)."""

    type: Literal["passthrough", "vgpu"]
    devices: list[str] = Field(default_factory=list, description="PCI functions bound to vfio.")
    host_drivers: dict[str, str | None] = Field(default_factory=dict)
    mdev_uuid: str | None = None
    mdev_type: str | None = None
    sysfsdev: str | None = None


class Passthrough(_Strict):
    possible: bool
    reason: str | None = None


class PciDevice(_Strict):
    address: str
    vendor_id: str
    device_id: str
    class_id: str
    class_name: str
    kind: str = Field(description="gpu, nic, storage, audio, usb, bridge, accelerator, other.")
    driver: str | None
    iommu_group: str | None
    iommu_group_members: list[str]
    passthrough: Passthrough
    in_use_by: str | None = None


class MdevType(_Strict):
    parent: str
    type: str
    name: str | None
    description: str | None
    device_api: str | None
    available_instances: int

    def fits(self, gpu: GpuSpec) -> bool:
        """Whether a VM asking for the vGPU ``gpu`` may get an instance of this type."""
        parent_fits = gpu.device is None or self.parent == gpu.device
        return parent_fits and (gpu.profile is None or gpu.profile in (self.type, self.name))


class HostDevices(_Strict):
    iommu_enabled: bool
    vfio_pci_loaded: bool
    devices: list[PciDevice]
    mdev_types: list[MdevType]


class GuestAgentInfo(_Strict):
    """Whether qemu-ga answers in the guest (live, never stored)."""

    connected: bool = False
    version: str | None = None
    reason: str | None = Field(
        default=None, description="Why it is not connected (None while connected)."
    )
    last_error: str | None = Field(
        default=None,
        description="The last protocol violation of this VM's agent (garbage it sent, or "
        "a failure of the server's agent task), kept after it reconnects.",
    )


class Vm(VmSpec):
    """A VM as the API reports it."""

    id: str
    uuid: str
    state: VmState
    state_reason: str | None = None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    accelerator: str | None = None
    pid: int | None = None
    network_info: NetworkInfo | None = None
    gpu_assignment: GpuAssignment | None = None
    guest_agent: GuestAgentInfo = Field(default_factory=GuestAgentInfo)
    security_notes: list[str] = Field(
        default_factory=list,
        description="What the VM's protections do not cover (e.g. a kernel booted directly).",
    )
    tenant: str = Field(
        default="default", description="The tenant of the API key that created the VM."
    )
    generation_id: str | None = Field(
        default=None,
        description="The VM generation id the guest sees (QEMU vmgenid); new after a "
        "restore or a fork, so the guest reseeds its RNG.",
    )
    from_snapshot: SnapshotRef | None = Field(
        default=None, description="The snapshot this VM was forked or created from."
    )
    node: str | None = Field(default=None, description="The node that runs it.")


class VmList(_Strict):
    vms: list[Vm]
    next_cursor: str | None = None


class DiskStats(_Strict):
    device: str
    read_bytes: int
    write_bytes: int
    read_ops: int
    write_ops: int


class VmMetrics(_Strict):
    vm_id: str
    vcpus: int
    cpu_percent: float
    memory_rss_bytes: int
    memory_configured_bytes: int
    disk: list[DiskStats]
    disk_read_bytes: int
    disk_write_bytes: int
    disk_read_ops: int
    disk_write_ops: int
    uptime_seconds: float
    cpu_seconds_total: float = 0.0
