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

from ...models import Vm
from ..devices import cloudinit, network, vfio
from ..devices.network import mac_address
from ..vmfiles.layout import VmPaths

__all__ = ["BootSource", "Confidential", "Platform", "build_argv", "escape_option", "mac_address"]


@dataclass(frozen=True)
class BootSource:
    """How the guest boots: a disk image (``kernel`` None) or a direct kernel."""

    disk_format: str = "qcow2"
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""


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
    return json.dumps(obj, separators=(",", ":"))


def _machine(accelerator: str, properties: str = "") -> list[str]:
    argv = ["-machine", f"q35{properties}", "-accel", accelerator]
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


def _display(vm: Vm, paths: VmPaths) -> list[str]:
    """No display, or a VGA card whose screen QEMU's VNC server offers on a unix socket
    in the run dir (QEMU 7.2 refuses a VNC websocket on a unix socket: the server
    proxies browsers to it itself)."""
    if vm.display.type == "none":
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


def _generation_id(vm: Vm) -> list[str]:
    """QEMU's vmgenid: a new GUID after a restore or fork tells the guest to reseed."""
    device = {"driver": "vmgenid", "id": "vmgenid0", "guid": vm.generation_id or "auto"}
    return ["-device", _json(device)]


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


def _platform(platform: Platform, vm: Vm, accelerator: str) -> list[str]:
    return [
        *_firmware(platform),
        *_tpm(platform),
        *_confidential(platform, vm.memory_mb, accelerator),
    ]


def build_argv(
    vm: Vm,
    boot: BootSource,
    paths: VmPaths,
    *,
    qemu_binary: str,
    accelerator: str,
    qmp_fd: int,
    nic_fd: int | None = None,
    platform: Platform = Platform(),  # frozen: a shared default is safe
    incoming: bool = False,
) -> list[str]:
    """The complete QEMU command line for ``vm``; QEMU starts paused (``-S``).

    ``incoming``: QEMU waits for a saved RAM state (``migrate-incoming``) instead of booting.
    ``nic_fd`` is a NAT VM's end of its passt socket (inherited by QEMU).

    Raises:
        ValueError: a value that would be unsafe or that this builder cannot express.
    """
    return [
        qemu_binary,
        "-name", f"guest={escape_option(vm.name)},process=hm-{vm.id},debug-threads=on",
        "-uuid", vm.uuid,
        *_machine(accelerator, _machine_properties(platform)),
        "-smp", str(int(vm.cpus)),
        "-m", f"{int(vm.memory_mb)}M",
        "-nodefaults", "-no-user-config", "-display", "none",
        *_display(vm, paths),
        "-pidfile", _plain_path(paths.pidfile),
        *_consoles(paths, qmp_fd),
        *_guest_agent(paths),
        *_disk(paths),
        *network.nic_args(vm, nic_fd),
        *cloudinit.seed_args(vm, boot, paths),
        *vfio.device_args(vm),
        "-device", _json({"driver": "pvpanic", "id": "panic0"}),
        *_generation_id(vm),
        "-action", "panic=shutdown",
        *_kernel(boot, vm),
        *_platform(platform, vm, accelerator),
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-S",
        *(["-incoming", "defer"] if incoming else []),
    ]  # fmt: skip
