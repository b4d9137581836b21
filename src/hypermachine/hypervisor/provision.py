"""Provisioning: a VM recorded ``creating`` gets its disk and platform, then ``stopped``
(or straight on to starting, for ``start=true``).

It runs as the VM's task in the manager's nursery: the image pulled first on a
worker thread when it is not on disk, then under the VM's lock the first layer of
its disk chain (a qcow2 overlay on the catalogue image, or a blank disk) and its
firmware variables and vTPM state. A failure leaves the VM ``error`` with the reason.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import trio

from ..config import Settings
from ..errors import HMError, VmNotFound
from ..models import Vm, VmState
from ..store import Store
from .platform import vmplatform
from .platform.host import HostFacts
from .ports import CatalogueLike, ImageLike
from .storage import disks, layers
from .vmfiles.confine import QemuIdentity
from .vmfiles.layout import VmPaths

__all__ = ["Provisioning", "ProvisioningHost"]


class ProvisioningHost(Protocol):
    """The manager as provisioning sees it."""

    _settings: Settings
    _store: Store
    _catalogue: CatalogueLike
    host: HostFacts
    qemu_identity: QemuIdentity | None

    def _paths(self, vm_id: str) -> VmPaths: ...
    def _lock(self, vm_id: str) -> trio.Lock: ...
    def _set(self, vm_id: str, state: VmState, reason: str | None, **extra: Any) -> Vm: ...
    async def _reach_folders(self) -> None: ...
    async def _start_locked(self, vm_id: str, *, resuming: bool = False) -> Vm: ...


class Provisioning:
    """Makes the disk and platform of the manager's new VMs."""

    def __init__(self, manager: ProvisioningHost) -> None:
        self._m = manager

    async def pull_then_provision(self, vm_id: str, start: bool) -> None:
        vm = self._m._store.get_vm(vm_id)
        try:
            image = await trio.to_thread.run_sync(self._m._catalogue.pull, vm.image)
        except HMError as err:
            with contextlib.suppress(VmNotFound):  # deleted while pulling
                self._m._set(vm_id, VmState.ERROR, f"image {vm.image!r} could not be pulled: {err}")
            return
        await self.provision(vm_id, image, start)

    async def provision(
        self,
        vm_id: str,
        image: ImageLike,
        start: bool,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with self._m._lock(vm_id):
            task_status.started()  # the lock is held: lifecycle calls now queue behind us
            try:
                vm = self._m._store.get_vm(vm_id)
            except VmNotFound:
                return  # deleted while its image was being pulled
            if vm.state is not VmState.CREATING:
                return
            paths = self._m._paths(vm_id)
            try:
                await self._make_disk(vm, image, paths)
            except HMError as err:
                self._m._set(vm_id, VmState.ERROR, f"disk creation failed: {err.message}")
                return
            try:
                if vm.security.vtpm:  # swtpm_setup runs as the QEMU user
                    await self._m._reach_folders()
                await vmplatform.prepare(
                    vm, paths, self._m.host, self._m._settings, self._m.qemu_identity
                )
            except HMError as err:
                self._m._set(vm_id, VmState.ERROR, f"firmware/TPM setup failed: {err.message}")
                return
            # Straight on to starting, with no checkpoint in between: nobody sees a
            # VM created with start=true sitting in "stopped".
            self._m._set(vm_id, VmState.STOPPED, None)
            if start:
                with contextlib.suppress(HMError):
                    await self._m._start_locked(vm_id)

    async def _make_disk(self, vm: Vm, image: ImageLike, paths: VmPaths) -> None:
        """The first layer of the VM's disk chain, named by ``disk.qcow2`` (layers.py)."""
        paths.vm_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        binary = self._m._settings.qemu_img_binary
        first = paths.vm_dir / layers.FIRST
        if image.disk is None:
            await disks.create_blank(binary, overlay=first, size_gb=vm.disk_gb)
        else:
            await disks.create_overlay(
                binary,
                base=image.disk,
                base_format=image.format,
                overlay=first,
                size_gb=vm.disk_gb,
            )
        layers.point_top(paths.vm_dir, layers.FIRST)
