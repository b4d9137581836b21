"""A fake sysfs for GPU tests: ``/sys/bus/pci``, IOMMU groups and mdev types in a temp dir.

Laid out as the kernel does (attribute files, relative symlinks for ``driver``,
``iommu_group`` and group members); the files the server writes to
(``driver_override``, drivers' ``bind``/``unbind``/``new_id``, ``drivers_probe``,
mdev ``create``/``remove``) are plain files, so a test reads what was written.
The kernel's reaction to a write is simulated only where a test says so.

The host it describes:

    group 0  0000:00:00.0  host bridge
    group 1  0000:00:01.0  PCI bridge (pcieport)
             0000:01:00.0  NVIDIA VGA (nouveau)        <- the passable GPU
             0000:01:00.1  NVIDIA audio (snd_hda_intel)
    group 2  0000:00:02.0  Intel VGA (i915), mdev parent <- not passable (ISA bridge)
             0000:00:1f.0  ISA bridge (lpc_ich)
    group 3  0000:05:00.0  Intel ethernet (igb)       <- not a GPU: only if the operator allows
    group 4  0000:06:00.0  Samsung NVMe (nvme)        <- not a GPU either
"""

from __future__ import annotations

import os
from pathlib import Path

DEVICES = [
    # address, vendor, device, class, driver, group
    ("0000:00:00.0", "8086", "3e30", "060000", None, "0"),
    ("0000:00:01.0", "8086", "1901", "060400", "pcieport", "1"),
    ("0000:01:00.0", "10de", "1eb8", "030000", "nouveau", "1"),
    ("0000:01:00.1", "10de", "10f8", "040300", "snd_hda_intel", "1"),
    ("0000:00:02.0", "8086", "3e92", "030000", "i915", "2"),
    ("0000:00:1f.0", "8086", "a306", "060100", "lpc_ich", "2"),
    ("0000:05:00.0", "8086", "1533", "020000", "igb", "3"),
    ("0000:06:00.0", "144d", "a808", "010802", "nvme", "4"),
]
DRIVERS = ["pcieport", "nouveau", "snd_hda_intel", "i915", "lpc_ich", "igb", "nvme", "vfio-pci"]
MDEV_PARENT = "0000:00:02.0"
MDEV_TYPES = [
    # type id, name, available instances
    ("i915-GVTg_V5_4", "GVTg_V5_4", 2),
    ("i915-GVTg_V5_8", "GVTg_V5_8", 0),
]


class FakeSysfs:
    def __init__(self, root: Path, *, iommu: bool = True) -> None:
        self.root = root
        pci = root / "bus" / "pci"
        (pci / "devices").mkdir(parents=True)
        (pci / "drivers_probe").write_text("")
        for driver in DRIVERS:
            folder = pci / "drivers" / driver
            folder.mkdir(parents=True)
            for name in ("bind", "unbind", "new_id"):
                (folder / name).write_text("")
        (root / "kernel" / "iommu_groups").mkdir(parents=True)
        (root / "bus" / "mdev" / "devices").mkdir(parents=True)
        for address, vendor, device, klass, bound, group in DEVICES:
            self._device(address, vendor, device, klass, bound, group if iommu else None)
        self._mdev_types()

    def _device(
        self,
        address: str,
        vendor: str,
        device: str,
        klass: str,
        driver: str | None,
        group: str | None,
    ) -> None:
        folder = self.root / "bus" / "pci" / "devices" / address
        folder.mkdir()
        (folder / "vendor").write_text(f"0x{vendor}\n")
        (folder / "device").write_text(f"0x{device}\n")
        (folder / "class").write_text(f"0x{klass}\n")
        (folder / "driver_override").write_text("(null)\n")
        if driver is not None:
            self.bind_as_kernel(address, driver)
        if group is not None:
            members = self.root / "kernel" / "iommu_groups" / group / "devices"
            members.mkdir(parents=True, exist_ok=True)
            os.symlink(f"../../../../kernel/iommu_groups/{group}", folder / "iommu_group")
            os.symlink(f"../../../../bus/pci/devices/{address}", members / address)

    def _mdev_types(self) -> None:
        types = self.root / "class" / "mdev_bus" / MDEV_PARENT / "mdev_supported_types"
        for type_id, name, available in MDEV_TYPES:
            folder = types / type_id
            folder.mkdir(parents=True)
            (folder / "name").write_text(f"{name}\n")
            (folder / "description").write_text("low_gm_size: 128MB\n")
            (folder / "device_api").write_text("vfio-pci\n")
            (folder / "available_instances").write_text(f"{available}\n")
            (folder / "create").write_text("")

    # -- what a test reads and does --------------------------------------------

    def read(self, relative: str) -> str:
        return (self.root / relative).read_text()

    def override(self, address: str) -> str:
        return self.read(f"bus/pci/devices/{address}/driver_override")

    def bind_as_kernel(self, address: str, driver: str) -> None:
        """What the kernel does after a successful probe: point ``driver`` at it."""
        link = self.root / "bus" / "pci" / "devices" / address / "driver"
        link.unlink(missing_ok=True)
        os.symlink(f"../../../../bus/pci/drivers/{driver}", link)

    def make_mdev(self, uuid: str) -> Path:
        """What the kernel does after a write to ``create``: the instance appears."""
        folder = self.root / "bus" / "mdev" / "devices" / uuid
        folder.mkdir()
        (folder / "remove").write_text("")
        return folder
