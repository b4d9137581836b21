"""A VM record -> the argv builder's plain data -> QEMU's command line.

:mod:`.qemu.argv` formats every option from plain types; this module fills them in
from a :class:`~hypermachine.models.Vm`: its identity and size, the NIC its network
plan gives (:mod:`.devices.network`), the cloud-init seed it needs
(:mod:`.devices.cloudinit`) and the GPU it was assigned (:mod:`.devices.vfio`).
"""

from __future__ import annotations

from dataclasses import replace

from ..models import Vm
from .devices import cloudinit, network, vfio
from .qemu import argv
from .qemu.argv import BootSource, Platform
from .vmfiles.layout import VmPaths

__all__ = ["build_argv", "guest"]

_NO_PLATFORM = Platform()  # frozen: a shared default is safe


def guest(vm: Vm) -> argv.Guest:
    return argv.Guest(
        id=vm.id,
        name=vm.name,
        uuid=vm.uuid,
        cpus=vm.cpus,
        memory_mb=vm.memory_mb,
        generation_id=vm.generation_id,
        display=vm.display.type != "none",
    )


def _boot(vm: Vm, boot: BootSource) -> BootSource:
    """The guest's address reaches a directly booted kernel as ip= (docs/networking.md)."""
    if boot.kernel is None:
        return boot
    return replace(boot, append=" ".join(filter(None, (boot.append, network.kernel_ip_param(vm)))))


def build_argv(
    vm: Vm,
    boot: BootSource,
    paths: VmPaths,
    *,
    qemu_binary: str,
    accelerator: str,
    qmp_fd: int,
    nic_fd: int | None = None,
    platform: Platform = _NO_PLATFORM,
    incoming: bool = False,
    top: str | None = None,
) -> list[str]:
    """The complete QEMU command line for ``vm`` (:func:`.qemu.argv.build_argv`).

    ``nic_fd`` is a NAT VM's end of its passt socket or a bridge VM's tap.

    Raises:
        ValueError: a value that would be unsafe or that the builder cannot express.
    """
    seeded = cloudinit.needs_seed(vm, direct_kernel=boot.kernel is not None)
    return argv.build_argv(
        guest(vm),
        _boot(vm, boot),
        paths,
        qemu_binary=qemu_binary,
        accelerator=accelerator,
        qmp_fd=qmp_fd,
        nic=network.nic(vm, nic_fd),
        seed=paths.seed_iso if seeded else None,
        gpu=vfio.gpu(vm.gpu_assignment),
        platform=platform,
        incoming=incoming,
        top=top,
    )
