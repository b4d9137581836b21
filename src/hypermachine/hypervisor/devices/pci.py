"""PCI devices, IOMMU groups and mediated-device types, read from sysfs.

Every path is under one ``sysfs_root`` (``/sys`` on a real host, a temp tree in
tests). Reading only: binding lives in :mod:`.vfio`. A device can be passed
through when it is meant to be — a display device (class 0x03xx), a function in
the same IOMMU group as one (the GPU's audio function), or an address the operator
lists in ``passthrough_allow`` — and it has an IOMMU group, vfio-pci is loaded,
and nothing in its group is a host or ISA bridge (the whole group goes to the
guest's side of the IOMMU; PCI-to-PCI bridges are exempt, as in the kernel's vfio
viability rule). So a NIC or an NVMe controller is never unbound from its host
driver because a client named it.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from ...models import MdevType, Passthrough

__all__ = [
    "PciFunction",
    "class_name",
    "iommu_enabled",
    "iommu_group_count",
    "kind_of",
    "list_functions",
    "list_mdev_types",
    "passthrough",
    "read_function",
    "vfio_pci_loaded",
]

_CLASS_NAMES = {
    0x0100: "SCSI storage controller",
    0x0101: "IDE interface",
    0x0104: "RAID bus controller",
    0x0106: "SATA controller",
    0x0108: "Non-Volatile memory controller",
    0x0200: "Ethernet controller",
    0x0280: "Network controller",
    0x0300: "VGA compatible controller",
    0x0302: "3D controller",
    0x0380: "Display controller",
    0x0401: "Multimedia audio controller",
    0x0403: "Audio device",
    0x0600: "Host bridge",
    0x0601: "ISA bridge",
    0x0604: "PCI bridge",
    0x0680: "Bridge",
    0x0C03: "USB controller",
    0x0C05: "SMBus",
    0x1200: "Processing accelerators",
}
_BASE_NAMES = {
    0x00: "Unclassified device",
    0x01: "Mass storage controller",
    0x02: "Network controller",
    0x03: "Display controller",
    0x04: "Multimedia controller",
    0x05: "Memory controller",
    0x06: "Bridge",
    0x07: "Communication controller",
    0x08: "Generic system peripheral",
    0x0C: "Serial bus controller",
    0x12: "Processing accelerators",
}
_KINDS = {
    0x01: "storage",
    0x02: "nic",
    0x03: "gpu",
    0x04: "audio",
    0x06: "bridge",
    0x12: "accelerator",
}
_PCI_BRIDGE = 0x0604
_DISPLAY = 0x03


@dataclass(frozen=True)
class PciFunction:
    """One PCI function as sysfs shows it."""

    address: str
    vendor_id: str
    device_id: str
    class_code: int  # 24 bits: base, sub, prog-if
    driver: str | None
    iommu_group: str | None

    @property
    def subclass(self) -> int:
        return self.class_code >> 8

    @property
    def slot(self) -> str:
        """``domain:bus:device`` (the functions of one card share it)."""
        return self.address.rsplit(".", 1)[0]

    @property
    def is_pci_bridge(self) -> bool:
        return self.subclass == _PCI_BRIDGE


def class_name(class_code: int) -> str:
    return _CLASS_NAMES.get(class_code >> 8) or _BASE_NAMES.get(class_code >> 16, "Other")


def kind_of(class_code: int) -> str:
    if class_code >> 8 == 0x0C03:
        return "usb"
    return _KINDS.get(class_code >> 16, "other")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _link_name(path: Path) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def _hex(text: str | None) -> int:
    try:
        return int(text or "0", 16)
    except ValueError:
        return 0


def read_function(sysfs_root: Path, address: str) -> PciFunction | None:
    """The function at ``address``, or None when sysfs has no such device."""
    base = sysfs_root / "bus" / "pci" / "devices" / address
    if not base.is_dir():
        return None
    return PciFunction(
        address=address,
        vendor_id=f"{_hex(_read(base / 'vendor')):04x}",
        device_id=f"{_hex(_read(base / 'device')):04x}",
        class_code=_hex(_read(base / "class")),
        driver=_link_name(base / "driver"),
        iommu_group=_link_name(base / "iommu_group"),
    )


def list_functions(sysfs_root: Path) -> list[PciFunction]:
    try:
        addresses = sorted(os.listdir(sysfs_root / "bus" / "pci" / "devices"))
    except OSError:
        return []
    found = (read_function(sysfs_root, a) for a in addresses)
    return [f for f in found if f is not None]


def group_members(sysfs_root: Path, group: str) -> list[str]:
    try:
        return sorted(os.listdir(sysfs_root / "kernel" / "iommu_groups" / group / "devices"))
    except OSError:
        return []


def iommu_group_count(sysfs_root: Path) -> int:
    """How many IOMMU groups the kernel made (0: no IOMMU, or it is off)."""
    try:
        return sum(1 for _ in (sysfs_root / "kernel" / "iommu_groups").iterdir())
    except OSError:
        return 0


def iommu_enabled(sysfs_root: Path) -> bool:
    return iommu_group_count(sysfs_root) > 0


def vfio_pci_loaded(sysfs_root: Path) -> bool:
    return (sysfs_root / "bus" / "pci" / "drivers" / "vfio-pci").is_dir()


def _meant_for_guests(sysfs_root: Path, function: PciFunction, allowed: Collection[str]) -> bool:
    """A display device, a companion in a display device's IOMMU group, or operator-listed."""
    if function.address in allowed or function.class_code >> 16 == _DISPLAY:
        return True
    companions = group_members(sysfs_root, function.iommu_group) if function.iommu_group else []
    return any(
        (other := read_function(sysfs_root, member)) is not None
        and other.class_code >> 16 == _DISPLAY
        for member in companions
    )


def passthrough(
    sysfs_root: Path, function: PciFunction, allowed: Collection[str] = ()
) -> Passthrough:
    """Whether the function (with its whole IOMMU group) can be handed to a guest, and why not.

    ``allowed`` is ``passthrough_allow``: addresses the operator opened besides display
    devices and their IOMMU-group companions.
    """
    if function.class_code >> 16 == 0x06:
        return Passthrough(possible=False, reason="a bridge, not an endpoint device")
    if not _meant_for_guests(sysfs_root, function, allowed):
        return Passthrough(
            possible=False,
            reason=f"a {class_name(function.class_code)}, not a display device nor in a "
            "display device's IOMMU group; only the host operator can allow it "
            "(passthrough_allow)",
        )
    if function.iommu_group is None:
        return Passthrough(
            possible=False, reason="no IOMMU group: the IOMMU is off or does not cover it"
        )
    if not vfio_pci_loaded(sysfs_root):
        return Passthrough(possible=False, reason="the vfio-pci driver is not loaded")
    for member in group_members(sysfs_root, function.iommu_group):
        other = read_function(sysfs_root, member)
        if other is not None and other.class_code >> 16 == 0x06 and not other.is_pci_bridge:
            holds = f"{class_name(other.class_code)} {member}"
            return Passthrough(
                possible=False,
                reason=f"IOMMU group {function.iommu_group} also holds {holds}, "
                "which the host cannot give up",
            )
    return Passthrough(possible=True)


def list_mdev_types(sysfs_root: Path) -> list[MdevType]:
    """Every mediated-device type of every mdev-capable parent."""
    bus = sysfs_root / "class" / "mdev_bus"
    found: list[MdevType] = []
    try:
        parents = sorted(os.listdir(bus))
    except OSError:
        return found
    for parent in parents:
        types_dir = bus / parent / "mdev_supported_types"
        try:
            type_ids = sorted(os.listdir(types_dir))
        except OSError:
            continue
        for type_id in type_ids:
            folder = types_dir / type_id
            available = _read(folder / "available_instances")
            found.append(
                MdevType(
                    parent=parent,
                    type=type_id,
                    name=_read(folder / "name"),
                    description=_read(folder / "description"),
                    device_api=_read(folder / "device_api"),
                    available_instances=int(available) if available and available.isdigit() else 0,
                )
            )
    return found
