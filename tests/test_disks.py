"""Disk helpers against real qemu-img."""

from __future__ import annotations

import subprocess
from pathlib import Path

from hypermachine.hypervisor.storage.disks import virtual_size


async def test_virtual_size_matches_qemu_img(tmp_path: Path) -> None:
    qcow2, raw = tmp_path / "a.qcow2", tmp_path / "b.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "3G"], check=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "5M"], check=True)
    assert await virtual_size("qemu-img", qcow2, "qcow2") == 3 * 1024**3
    assert await virtual_size("qemu-img", raw, "raw") == 5 * 1024**2
    assert await virtual_size("qemu-img", raw, "qcow2") == 5 * 1024**2  # not qcow2: asks qemu-img
