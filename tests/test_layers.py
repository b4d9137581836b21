"""A new empty disk layer (every snapshot, restore and fork makes one): the bytes qemu-img
makes, with qemu-img run once per backing name and size, and never written through a
name the QEMU user planted in the VM's folder (it owns that folder)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import trio

from hypermachine.errors import VmFilesDamaged
from hypermachine.hypervisor.storage import layers


def _vm_dir(tmp_path: Path, name: str) -> Path:
    """A VM folder whose first layer sits on a 16 MiB base image outside it."""
    base = tmp_path / "base.qcow2"
    if not base.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    vm_dir = tmp_path / name
    vm_dir.mkdir(mode=0o700)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
         str(vm_dir / layers.FIRST)], check=True,
    )  # fmt: skip
    return vm_dir


def _counting_qemu_img(tmp_path: Path) -> tuple[str, Path]:
    """A qemu-img that notes each run in a file, then is the real one."""
    runs = tmp_path / "qemu-img-runs"
    script = tmp_path / "qemu-img"
    script.write_text(f'#!/bin/sh\necho run >> "{runs}"\nexec qemu-img "$@"\n')
    script.chmod(0o755)
    return str(script), runs


async def test_a_new_layer_is_what_qemu_img_makes_and_qemu_img_runs_once(
    tmp_path: Path,
) -> None:
    qemu_img, runs = _counting_qemu_img(tmp_path)
    first, second = _vm_dir(tmp_path, "vm-a"), _vm_dir(tmp_path, "vm-b")
    made = [await layers.create_above(qemu_img, vm_dir, layers.FIRST) for vm_dir in (first, second)]
    assert made == ["disk-0002.qcow2"] * 2
    assert runs.read_text().count("run") == 1  # the second is a copy

    direct = tmp_path / "direct.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", layers.FIRST, "-F", "qcow2",
         str(direct), str(16 * 2**20)], check=True,
    )  # fmt: skip
    for vm_dir in (first, second):
        layer = vm_dir / made[0]
        assert layer.read_bytes() == direct.read_bytes()
        assert layer.stat().st_mode & 0o777 == 0o644  # as qemu-img leaves it (umask 022)
        subprocess.run(["qemu-img", "check", "-q", str(layer)], check=True)
        info = subprocess.run(
            ["qemu-img", "info", "--output=json", str(layer)],
            capture_output=True, check=True, text=True,
        )  # fmt: skip
        got = json.loads(info.stdout)
        assert (got["backing-filename"], got["virtual-size"]) == (layers.FIRST, 16 * 2**20)
        assert layers.chain(vm_dir, made[0]) == [made[0], layers.FIRST]


async def test_a_planted_name_fails_the_layer_and_is_not_written_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The QEMU user plants the next layer's name as a symlink to a host file between
    the folder's listing and the write (the listing is made stale here to stand in for
    that race)."""
    vm_dir = _vm_dir(tmp_path, "vm")
    victim = tmp_path / "host-file"
    victim.write_bytes(b"the host's own")
    (vm_dir / "disk-0002.qcow2").symlink_to(victim)
    monkeypatch.setattr(layers, "all_layers", lambda _dir: [layers.FIRST])
    with pytest.raises(VmFilesDamaged, match=r"disk-0002\.qcow2"):
        await layers.create_above("qemu-img", vm_dir, layers.FIRST)
    assert victim.read_bytes() == b"the host's own"
    assert (vm_dir / "disk-0002.qcow2").is_symlink()


def test_a_planted_layer_is_read_neither_through_a_symlink_nor_as_a_fifo(tmp_path: Path) -> None:
    """The QEMU user swaps a frozen layer for a symlink to a host qcow2 (the server
    would read the host file's header) or for a FIFO (a blocking open would hang the
    server): neither is read as a layer, and the server carries on."""
    vm_dir = _vm_dir(tmp_path, "vm")
    host_image = tmp_path / "host.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "/etc/hostname", "-F", "raw",
         "-u", str(host_image), "1M"], check=True,
    )  # fmt: skip
    (vm_dir / "disk-0002.qcow2").symlink_to(host_image)
    os.mkfifo(vm_dir / "disk-0003.qcow2")
    for planted in ("disk-0002.qcow2", "disk-0003.qcow2"):
        assert layers.backing_of(vm_dir / planted) is None
        assert layers.virtual_size(vm_dir / planted) is None
        assert layers.chain(vm_dir, planted) == []


async def test_a_layer_above_a_planted_fifo_is_refused(tmp_path: Path) -> None:
    vm_dir = _vm_dir(tmp_path, "vm")
    os.mkfifo(vm_dir / "disk-0002.qcow2")
    with trio.fail_after(10), pytest.raises(VmFilesDamaged, match="not a qcow2 image"):
        await layers.create_above("qemu-img", vm_dir, "disk-0002.qcow2")


def test_a_huge_backing_name_length_is_not_read_whole(tmp_path: Path) -> None:
    """A layer whose header claims a 4 GiB backing file name: at most the 1023 bytes
    qcow2 allows are read."""
    vm_dir = _vm_dir(tmp_path, "vm")
    layer = vm_dir / layers.FIRST
    header = bytearray(layer.read_bytes())
    header[16:20] = (2**32 - 1).to_bytes(4, "big")
    layer.write_bytes(bytes(header))
    backing = layers.backing_of(layer)
    assert backing is not None and len(backing) <= 1023
