"""Many hosts: a cluster's nodes as etcd describes them, and live migration."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from .base import NODE_PATTERN, _Strict
from .host import FirmwareKind
from .vm import MdevType, Vm

__all__ = [
    "DiskPlan",
    "FreeDevice",
    "IncomingOffer",
    "IncomingPorts",
    "MigrateRequest",
    "Migration",
    "Node",
    "NodeList",
    "NodeState",
]


class MigrateRequest(_Strict):
    """Where a running VM moves, keeping its RAM, devices and disk while it runs."""

    node: str | None = Field(
        default=None,
        pattern=NODE_PATTERN,
        description="The node to move to; omitted (or this node's name): a fresh QEMU "
        "process on this host (e.g. to run a newer QEMU under the guest).",
    )


class Migration(_Strict):
    """A finished live migration, with QEMU's figures for it."""

    vm: Vm
    source_node: str
    node: str
    total_time_ms: int = Field(description="From the start of the stream to its end (QEMU).")
    downtime_ms: int = Field(description="How long the guest was paused for the last pass (QEMU).")
    setup_time_ms: int = 0
    transferred_bytes: int = 0
    switchover_ms: float = Field(
        description="The server's part: from the end of the stream to the guest running again."
    )


class DiskPlan(_Strict):
    """How the destination remakes a VM's disk folder when storage is not shared: the
    ``files`` travel first as they are (frozen layers, the seed, the VARS), then the
    written ``top`` layer and the VARS are mirrored over NBD while the guest runs."""

    files: dict[str, int] = Field(
        description="Path in the VM's folder (its layers, seed, VARS, snapshots) → size."
    )
    top: str = Field(pattern=r"^disk-\d{4,}\.qcow2$")
    virtual_size: int = Field(ge=1)
    below: str | None = Field(
        default=None,
        pattern=r"^disk-\d{4,}\.qcow2$",
        description="The layer under the top (one of files); None: the image itself.",
    )
    on_image: list[str] = Field(
        default_factory=list,
        description="The layers backed by the catalogue image (an absolute path).",
    )
    image_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="The catalogue image's digest (None: a blank disk, no image below).",
    )
    image_format: str | None = None
    mirrored: list[str] = Field(description="The block nodes the source mirrors over NBD.")


class IncomingOffer(_Strict):
    """A source node's announcement of a migration (node to node, signed)."""

    token: str = Field(pattern=r"^[0-9a-f]{32}$")
    source_node: str = Field(pattern=NODE_PATTERN)
    vm: Vm
    disk: DiskPlan | None = Field(description="None: the VM's folder is on shared storage.")


class IncomingPorts(_Strict):
    """Where the destination waits: the migration stream, and NBD for the disks."""

    host: str
    migration_port: int
    nbd_port: int | None = None


class NodeState(StrEnum):
    UP = "up"  # its lease is alive
    DOWN = "down"  # registered once, its lease has expired


class FreeDevice(_Strict):
    """A PCI device a node could pass through to a new VM now."""

    address: str
    kind: str = Field(description="gpu, or another kind the node's operator allows.")


class Node(_Strict):
    """One host of the cluster, as it last described itself in etcd."""

    name: str
    url: str = Field(description="Where the other nodes reach its API (--advertise).")
    state: NodeState
    accelerator: str
    qemu_version: str
    capabilities: list[str] = Field(
        description="What it can run: kvm, uefi, secure_boot, vtpm, sev, sev_es, sev_snp, tdx, "
        "vfio, shared_storage."
    )
    cpus: int
    memory_mb: int
    free_vcpus: int = Field(description="vCPUs its admission budget has left.")
    free_memory_mb: int = Field(description="Memory its admission budget has left.")
    firmware: list[FirmwareKind] = Field(
        default_factory=list,
        description="The kinds of firmware set it has: bios, uefi, uefi-secure-boot, confidential.",
    )
    free_devices: list[FreeDevice] = Field(
        default_factory=list,
        description="PCI devices it can pass through now: passable, and no VM holds them "
        "or a device of their IOMMU group.",
    )
    vgpu_types: list[MdevType] = Field(
        default_factory=list,
        description="Its vGPU types, each with the instances left (the kernel's count).",
    )
    vms: int = Field(description="VMs it holds.")
    live_vms: int = Field(description="Of those, with a QEMU process.")
    updated_at: datetime


class NodeList(_Strict):
    nodes: list[Node]
    cluster: bool = Field(description="False: a single host, not in a cluster.")
