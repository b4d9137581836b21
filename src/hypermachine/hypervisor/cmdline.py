"""VM spec + host facts -> QEMU argv. Pure: no I/O, clock, environment or globals.

Every value that reaches QEMU from a client is either validated by the models
or placed where QEMU cannot read it as more options: ``-blockdev``/``-device``/
``-netdev`` are JSON, and the few comma-parsed options escape ``,`` as ``,,``.
Host paths come only from the server's own layout and catalogue.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..models import Vm
from . import cloudinit, network, vfio
from .layout import VmPaths
from .network import mac_address

__all__ = ["BootSource", "build_argv", "escape_option", "mac_address"]


@dataclass(frozen=True)
class BootSource:
    """How the guest boots: a disk image (``kernel`` None) or a direct kernel."""

    disk_format: str = "qcow2"
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""


def escape_option(value: str) -> str:
    """Make ``value`` one literal value of a comma-separated QEMU option."""
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"control character in QEMU option value {value!r}")
    return value.replace(",", ",,")


def _plain_path(path: Path) -> str:
    """A host path passed as a whole argument (not comma-parsed)."""
    text = str(path)
    if not path.is_absolute() or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ValueError(f"host path must be absolute and printable: {text!r}")
    return text


def _option_path(path: Path) -> str:
    """A host path inside a comma-separated option value."""
    return escape_option(_plain_path(path))


def _json(obj: Mapping[str, object]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _machine(accelerator: str) -> list[str]:
    argv = ["-machine", "q35", "-accel", accelerator]
    # -cpu host is KVM-only; TCG keeps QEMU's default model (max aborts on some hosts).
    if accelerator == "kvm":
        argv += ["-cpu", "host"]
    return argv


def _disk(paths: VmPaths) -> list[str]:
    file_node = {"driver": "file", "node-name": "disk0-file", "filename": str(paths.disk)}
    fmt_node = {"driver": "qcow2", "node-name": "disk0", "file": "disk0-file"}
    device = {"driver": "virtio-blk-pci", "drive": "disk0", "id": "vd0", "bootindex": 1}
    _plain_path(paths.disk)
    return ["-blockdev", _json(file_node), "-blockdev", _json(fmt_node), "-device", _json(device)]


def _consoles(paths: VmPaths, qmp_fd: int) -> list[str]:
    serial = (
        f"socket,id=serial0,path={_option_path(paths.serial_socket)},server=on,wait=off,"
        f"logfile={_option_path(paths.console_log)},logappend=on"
    )
    return [
        "-chardev", serial,
        "-serial", "chardev:serial0",
        # The server binds the QMP socket itself and hands QEMU the listening fd,
        # so it can connect the moment QEMU starts, with no polling for the path.
        "-chardev", f"socket,id=qmp,fd={int(qmp_fd)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
    ]  # fmt: skip


def _guest_agent(paths: VmPaths) -> list[str]:
    """A virtio-serial port named ``org.qemu.guest_agent.0`` on a unix socket for qemu-ga."""
    chardev = f"socket,id=qga0,path={_option_path(paths.qga_socket)},server=on,wait=off"
    port: dict[str, object] = {
        "driver": "virtserialport",
        "bus": "vser0.0",
        "chardev": "qga0",
        "name": "org.qemu.guest_agent.0",
    }
    return [
        "-chardev", chardev,
        "-device", _json({"driver": "virtio-serial-pci", "id": "vser0"}),
        "-device", _json(port),
    ]  # fmt: skip


def _kernel(boot: BootSource, vm: Vm) -> list[str]:
    if boot.kernel is None:
        return []
    # The guest's address reaches a directly booted kernel as ip= (docs/networking.md).
    append = " ".join(filter(None, (boot.append, network.kernel_ip_param(vm))))
    if "\n" in append or len(append) > 2048:
        raise ValueError("kernel command line has a newline or is too long")
    argv = ["-kernel", _plain_path(boot.kernel)]
    if boot.initrd is not None:
        argv += ["-initrd", _plain_path(boot.initrd)]
    if append:
        argv += ["-append", append]
    return argv


def build_argv(
    vm: Vm,
    boot: BootSource,
    paths: VmPaths,
    *,
    qemu_binary: str,
    accelerator: str,
    qmp_fd: int,
) -> list[str]:
    """The complete QEMU command line for ``vm``; QEMU starts paused (``-S``).

    Raises:
        ValueError: a value that would be unsafe or that this builder cannot express.
    """
    return [
        qemu_binary,
        "-name", f"guest={escape_option(vm.name)},process=hm-{vm.id},debug-threads=on",
        "-uuid", vm.uuid,
        *_machine(accelerator),
        "-smp", str(int(vm.cpus)),
        "-m", f"{int(vm.memory_mb)}M",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-pidfile", _plain_path(paths.pidfile),
        *_consoles(paths, qmp_fd),
        *_guest_agent(paths),
        *_disk(paths),
        *network.nic_args(vm),
        *cloudinit.seed_args(vm, boot, paths),
        *vfio.device_args(vm),
        "-device", _json({"driver": "pvpanic", "id": "panic0"}),
        "-action", "panic=shutdown",
        *_kernel(boot, vm),
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-S",
    ]  # fmt: skip
