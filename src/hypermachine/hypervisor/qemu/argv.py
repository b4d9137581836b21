"""Plain data -> QEMU argv: the one place that formats QEMU's command line. Pure: no
I/O, clock, environment or globals, and no knowledge of the models: the callers fill
in the plain types below (:mod:`..vm_argv` does it for a VM record).

Every value that reaches QEMU from a client is either validated by the models
or placed where QEMU cannot read it as more options: ``-blockdev``/``-device``/
``-netdev``/``-object`` are JSON (:func:`_json`), and the few comma-parsed options
escape ``,`` as ``,,`` (:func:`escape_option`). Host paths come only from the
server's own layout and catalogue.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..vmfiles.layout import VmPaths

__all__ = [
    "DISK_DEVICE",
    "BootSource",
    "Confidential",
    "Gpu",
    "Guest",
    "Nic",
    "Platform",
    "build_argv",
    "escape_option",
    "gpu_args",
    "launched_for",
    "launched_in",
    "nic_args",
    "probe_argv",
    "seed_args",
]


@dataclass(frozen=True)
class Guest:
    """Who the guest is and how big: the parts of a VM record QEMU sees directly."""

    id: str
    name: str
    uuid: str
    cpus: int
    memory_mb: int
    generation_id: str | None = None  # None: QEMU picks one ("auto")
    display: bool = False  # a VGA card whose screen QEMU's VNC server offers


@dataclass(frozen=True)
class BootSource:
    """How the guest boots: a disk image (``kernel`` None) or a direct kernel."""

    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""


@dataclass(frozen=True)
class Nic:
    """The VM's NIC and its backend descriptor, opened by the server: a NAT VM's
    connected passt socket (``stream``), a bridge VM's tap (``tap``)."""

    backend: Literal["stream", "tap"]
    fd: int
    mac: str | None


@dataclass(frozen=True)
class Gpu:
    """A GPU for the guest: a mediated device (``mdev_sysfsdev``) or whole PCI
    functions (``functions``, PCI addresses) behind one root port."""

    functions: tuple[str, ...] = ()
    mdev_sysfsdev: str | None = None


@dataclass(frozen=True)
class Confidential:
    """A memory-encrypted guest; the numbers come from the host's SEV capabilities."""

    variant: str  # "sev", "sev_es", "sev_snp" or "tdx"
    cbitpos: int = 0
    reduced_phys_bits: int = 0
    policy: int = 0
    kernel_hashes: bool = False  # measure a directly booted kernel (SEV/SNP)


@dataclass(frozen=True)
class Platform:
    """Firmware, TPM and confidential-computing parts, resolved to host paths.

    ``firmware_code`` + ``firmware_vars``: OVMF in pflash (CODE read-only, the VM's
    own VARS); ``firmware_bios``: a stateless image for ``-bios`` (SNP, TDX).
    """

    firmware_code: Path | None = None
    firmware_vars: Path | None = None
    firmware_bios: Path | None = None
    secure_boot: bool = False
    tpm_socket: Path | None = None
    confidential: Confidential | None = None


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
    """An option value as compact JSON (QEMU reads a value starting with ``{`` as JSON)."""
    return json.dumps(obj, separators=(",", ":"))


_VFIO = "vfio-pci"
DISK_DEVICE = "vd0"  # the id of the VM's disk device (snapshots find its node by it)


def _machine(accelerator: str, properties: str = "") -> list[str]:
    argv = ["-machine", f"q35{properties}", "-accel", accelerator]
    # -cpu host is KVM-only; TCG keeps QEMU's default model (max aborts on some hosts).
    if accelerator == "kvm":
        argv += ["-cpu", "host"]
    return argv


def _disk(paths: VmPaths, top: str | None) -> list[str]:
    disk = paths.vm_dir / top if top is not None else paths.disk
    file_node = {"driver": "file", "node-name": "disk0-file", "filename": str(disk)}
    fmt_node = {"driver": "qcow2", "node-name": "disk0", "file": "disk0-file"}
    device = {"driver": "virtio-blk-pci", "drive": "disk0", "id": DISK_DEVICE, "bootindex": 1}
    _plain_path(disk)
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


def _display(guest: Guest, paths: VmPaths) -> list[str]:
    """No display, or a VGA card whose screen QEMU's VNC server offers on a unix socket
    in the run dir (QEMU 7.2 refuses a VNC websocket on a unix socket: the server
    proxies browsers to it itself)."""
    if not guest.display:
        return []
    return [
        "-device", _json({"driver": "VGA", "id": "video0"}),
        "-vnc", f"unix:{_option_path(paths.vnc_socket)}",
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


def _generation_id(guest: Guest) -> list[str]:
    """QEMU's vmgenid: a new GUID after a restore or fork tells the guest to reseed."""
    device = {"driver": "vmgenid", "id": "vmgenid0", "guid": guest.generation_id or "auto"}
    return ["-device", _json(device)]


def _kernel(boot: BootSource) -> list[str]:
    if boot.kernel is None:
        return []
    append = boot.append
    if "\n" in append or len(append) > 2048:
        raise ValueError("kernel command line has a newline or is too long")
    argv = ["-kernel", _plain_path(boot.kernel)]
    if boot.initrd is not None:
        argv += ["-initrd", _plain_path(boot.initrd)]
    if append:
        argv += ["-append", append]
    return argv


def _machine_properties(platform: Platform) -> str:
    """``,key=value`` additions to ``-machine q35`` for firmware and confidential guests."""
    props = []
    if platform.secure_boot:
        props.append("smm=on")
    elif platform.confidential is not None:
        props.append("smm=off")  # SEV-ES, SNP and TDX guests cannot have SMM
    if platform.firmware_code is not None:
        props += ["pflash0=fw-code", "pflash1=fw-vars"]
    if platform.confidential is not None:
        props.append("confidential-guest-support=cgs0")
        if platform.confidential.variant == "sev_snp":
            props.append("memory-backend=ram0")
        if platform.confidential.variant == "tdx":
            props.append("kernel-irqchip=split")
    return "".join(f",{p}" for p in props)


def _firmware(platform: Platform) -> list[str]:
    if platform.firmware_bios is not None:
        return ["-bios", _plain_path(platform.firmware_bios)]
    if platform.firmware_code is None:
        return []
    if platform.firmware_vars is None:
        raise ValueError("pflash firmware needs the VM's VARS file")
    code = {
        "driver": "file",
        "node-name": "fw-code",
        "filename": _plain_path(platform.firmware_code),
        "read-only": True,
    }
    vars_: dict[str, object] = {
        "driver": "file",
        "node-name": "fw-vars",
        "filename": _plain_path(platform.firmware_vars),
    }
    argv = ["-blockdev", _json(code), "-blockdev", _json(vars_)]
    if platform.secure_boot:  # only SMM code may write the (secure) variable store
        argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
    return argv


def _tpm(platform: Platform) -> list[str]:
    if platform.tpm_socket is None:
        return []
    return [
        "-chardev", f"socket,id=tpmchr0,path={_option_path(platform.tpm_socket)}",
        "-tpmdev", "emulator,id=tpm0,chardev=tpmchr0",
        "-device", _json({"driver": "tpm-crb", "tpmdev": "tpm0", "id": "tpm0-crb"}),
    ]  # fmt: skip


def _confidential(platform: Platform, memory_mb: int, accelerator: str) -> list[str]:
    cc = platform.confidential
    if cc is None:
        return []
    if accelerator != "kvm":  # QEMU 7.2 aborts on sev-guest under TCG
        raise ValueError(f"{cc.variant} needs KVM, not {accelerator}")
    if cc.variant == "tdx":
        return ["-object", _json({"qom-type": "tdx-guest", "id": "cgs0"})]
    guest: dict[str, object] = {
        "qom-type": "sev-snp-guest" if cc.variant == "sev_snp" else "sev-guest",
        "id": "cgs0",
        "cbitpos": int(cc.cbitpos),
        "reduced-phys-bits": int(cc.reduced_phys_bits),
        "policy": int(cc.policy),
    }
    if cc.kernel_hashes:
        guest["kernel-hashes"] = True
    argv = ["-object", _json(guest)]
    if cc.variant == "sev_snp":
        ram = {
            "qom-type": "memory-backend-memfd",
            "id": "ram0",
            "size": int(memory_mb) * 1024 * 1024,
            "share": True,
        }
        argv += ["-object", _json(ram)]
    return argv


def _platform(platform: Platform, memory_mb: int, accelerator: str) -> list[str]:
    return [
        *_firmware(platform),
        *_tpm(platform),
        *_confidential(platform, memory_mb, accelerator),
    ]


def nic_args(nic: Nic | None) -> list[str]:
    """``-netdev`` and ``-device`` (JSON) for the VM's NIC; nothing without one."""
    if nic is None:
        return []
    netdev: dict[str, object]
    if nic.backend == "stream":
        netdev = {
            "type": "stream",
            "id": "net0",
            "server": False,
            "addr": {"type": "fd", "str": str(int(nic.fd))},
        }
    else:
        netdev = {"type": "tap", "id": "net0", "fd": str(int(nic.fd))}
    device = {"driver": "virtio-net-pci", "netdev": "net0", "id": "nic0", "mac": nic.mac}
    return ["-netdev", _json(netdev), "-device", _json(device)]


def seed_args(seed: Path | None) -> list[str]:
    """``-blockdev``/``-device`` (JSON) attaching the cloud-init seed read-only."""
    if seed is None:
        return []
    file_node = {
        "driver": "file",
        "node-name": "seed0-file",
        "filename": _plain_path(seed),
        "read-only": True,
    }
    raw_node = {"driver": "raw", "node-name": "seed0", "file": "seed0-file", "read-only": True}
    device = {"driver": "virtio-blk-pci", "drive": "seed0", "id": "seed0", "serial": "cidata"}
    return ["-blockdev", _json(file_node), "-blockdev", _json(raw_node), "-device", _json(device)]


def gpu_args(gpu: Gpu | None) -> list[str]:
    """``-device`` JSON for the VM's GPU: its functions behind one root port, or the mdev."""
    if gpu is None:
        return []
    if gpu.mdev_sysfsdev is not None:
        return ["-device", _json({"driver": _VFIO, "sysfsdev": gpu.mdev_sysfsdev, "id": "gpu0"})]
    port = {"driver": "pcie-root-port", "id": "gpu-rp0", "bus": "pcie.0", "chassis": 64}
    argv = ["-device", _json(port)]
    for index, address in enumerate(gpu.functions):
        function = int(address.rsplit(".", 1)[1])
        device: dict[str, object] = {
            "driver": _VFIO,
            "host": address,
            "id": f"gpu0-{index}",
            "bus": "gpu-rp0",
            "addr": f"00.{function}",
        }
        if len(gpu.functions) > 1 and function == 0:
            device["multifunction"] = True
        argv += ["-device", _json(device)]
    return argv


def build_argv(
    guest: Guest,
    boot: BootSource,
    paths: VmPaths,
    *,
    qemu_binary: str,
    accelerator: str,
    qmp_fd: int,
    nic: Nic | None = None,
    seed: Path | None = None,
    gpu: Gpu | None = None,
    platform: Platform = Platform(),  # frozen: a shared default is safe
    incoming: bool = False,
    top: str | None = None,
) -> list[str]:
    """The complete QEMU command line for ``guest``; QEMU starts paused (``-S``).

    ``incoming``: QEMU waits for a saved RAM state (``migrate-incoming``) instead of booting.
    ``top``: the disk's top layer (a file of the VM's folder), instead of ``disk.qcow2``.

    Raises:
        ValueError: a value that would be unsafe or that this builder cannot express.
    """
    return [
        qemu_binary,
        "-name", f"guest={escape_option(guest.name)},process=hm-{guest.id},debug-threads=on",
        "-uuid", guest.uuid,
        *_machine(accelerator, _machine_properties(platform)),
        "-smp", str(int(guest.cpus)),
        "-m", f"{int(guest.memory_mb)}M",
        "-nodefaults", "-no-user-config", "-display", "none",
        *_display(guest, paths),
        "-pidfile", _plain_path(paths.pidfile),
        *_consoles(paths, qmp_fd),
        *_guest_agent(paths),
        *_disk(paths, top),
        *nic_args(nic),
        *seed_args(seed),
        *gpu_args(gpu),
        "-device", _json({"driver": "pvpanic", "id": "panic0"}),
        *_generation_id(guest),
        "-action", "panic=shutdown",
        *_kernel(boot),
        *_platform(platform, guest.memory_mb, accelerator),
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-S",
        *(["-incoming", "defer"] if incoming else []),
    ]  # fmt: skip


def probe_argv(qemu_binary: str, accelerator: str) -> list[str]:
    """A QEMU with no guest (``-machine none``) answering QMP on its stdin/stdout."""
    return [qemu_binary, "-machine", "none", "-accel", accelerator, "-nodefaults",
            "-display", "none", "-S", "-qmp", "stdio"]  # fmt: skip


def launched_for(cmdline: list[str], uuid: str) -> bool:
    """Whether a process's command line is a QEMU :func:`build_argv` made for ``uuid``."""
    return uuid in cmdline and "-uuid" in cmdline


def launched_in(cmdline: list[str], runtime_dir: str) -> bool:
    """Whether a process's command line is a QEMU :func:`build_argv` made for a VM whose
    run dir is directly inside ``runtime_dir`` (its ``-pidfile`` is there): one of the
    QEMUs of the server owning that runtime dir."""
    if "-uuid" not in cmdline or "-pidfile" not in cmdline[:-1]:
        return False
    pidfile = cmdline[cmdline.index("-pidfile") + 1]
    run_dir = os.path.dirname(os.path.normpath(pidfile))
    return os.path.isabs(pidfile) and os.path.dirname(run_dir) == os.path.normpath(runtime_dir)
