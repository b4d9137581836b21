"""GPUs for VMs: whole PCI devices bound to vfio-pci, or mediated devices (vGPU).

:class:`GpuAllocator` is the one owner of the host's GPUs. ``acquire`` runs under
one lock and a reservation table (PCI function or mdev -> VM id, rebuilt from the
stored VMs after a restart), so two VMs never get the same device even when they
start at the same moment. Passthrough binds every endpoint of the device's IOMMU
group to vfio-pci (``driver_override`` + unbind + ``drivers_probe``) and records
the driver each had; ``release`` gives them back. vGPU writes a UUID stable per VM
to the type's ``create`` and ``1`` to the instance's ``remove``. Every sysfs write
is logged (``sysfs: PATH <- VALUE``), since it changes the host.

:func:`gpu` (pure) turns a VM's assignment into the argv builder's :class:`~..qemu.argv.Gpu`.
"""

from __future__ import annotations

import contextlib
import logging
import uuid as uuidlib
from collections.abc import Callable, Collection, Iterable
from pathlib import Path

import trio

from ...errors import DeviceInUse, DeviceUnavailable, HypervisorError, Unsupported
from ...models import GpuAssignment, GpuSpec, HostDevices, MdevType, Passthrough, PciDevice, Vm
from ..qemu import argv
from . import pci

__all__ = ["GpuAllocator", "gpu", "mdev_uuid"]

log = logging.getLogger(__name__)

_VFIO = "vfio-pci"


def mdev_uuid(vm_uuid: str) -> str:
    """The VM's mediated device: the same UUID at every start."""
    return str(uuidlib.uuid5(uuidlib.UUID(vm_uuid), "hypermachine/vgpu0"))


def gpu(assignment: GpuAssignment | None) -> argv.Gpu | None:
    """A VM's GPU assignment for the argv builder: the mdev, or the PCI functions.

    Raises:
        ValueError: a vGPU assignment without its sysfs device.
    """
    if assignment is None:
        return None
    if assignment.type == "vgpu":
        if assignment.sysfsdev is None:
            raise ValueError("a vGPU assignment needs its sysfs device")
        return argv.Gpu(mdev_sysfsdev=assignment.sysfsdev)
    return argv.Gpu(functions=tuple(assignment.devices))


class GpuAllocator:
    """Hands GPUs to VMs and takes them back, against sysfs at ``sysfs_root``."""

    def __init__(
        self,
        sysfs_root: Path,
        stored_vms: Callable[[], Iterable[Vm]],
        timeout_s: float,
        allowed: Collection[str] = (),
    ) -> None:
        self._root = sysfs_root
        self._allowed = frozenset(allowed)  # passthrough_allow
        self._stored_vms = stored_vms
        self._timeout_s = timeout_s
        self._lock = trio.Lock()
        self._held: dict[str, str] | None = None  # PCI address or mdev UUID -> VM id

    # -- what exists -----------------------------------------------------------

    def _table(self) -> dict[str, str]:
        """The reservation table, rebuilt from the stored VMs on first use."""
        if self._held is None:
            held: dict[str, str] = {}
            for vm in self._stored_vms():
                if vm.gpu_assignment is not None:
                    held.update(_held_keys(vm.id, vm.gpu_assignment))
            self._held = held
        return self._held

    async def devices(self) -> HostDevices:
        """Every PCI function and mdev type, with passthrough verdicts and holders."""
        return await trio.to_thread.run_sync(self._scan, dict(self._table()))

    def _scan(self, held: dict[str, str]) -> HostDevices:
        listed = []
        for function in pci.list_functions(self._root):
            group = function.iommu_group
            listed.append(
                PciDevice(
                    address=function.address,
                    vendor_id=function.vendor_id,
                    device_id=function.device_id,
                    class_id=f"{function.class_code:06x}",
                    class_name=pci.class_name(function.class_code),
                    kind=pci.kind_of(function.class_code),
                    driver=function.driver,
                    iommu_group=group,
                    iommu_group_members=pci.group_members(self._root, group) if group else [],
                    passthrough=self._verdict(function),
                    in_use_by=held.get(function.address),
                )
            )
        return HostDevices(
            iommu_enabled=pci.iommu_enabled(self._root),
            vfio_pci_loaded=pci.vfio_pci_loaded(self._root),
            devices=listed,
            mdev_types=pci.list_mdev_types(self._root),
        )

    def unsupported(self, spec: GpuSpec) -> str | None:
        """Why this host can never give ``spec`` a GPU, or None (checked at create)."""
        if not spec.enabled:
            return None
        if spec.type == "vgpu":
            return _vgpu_blocker(spec, pci.list_mdev_types(self._root))
        if not pci.iommu_enabled(self._root):
            return "this host has no IOMMU groups (IOMMU off), so no device can be passed through"
        if spec.device is not None:
            function = pci.read_function(self._root, spec.device)
            if function is None:
                return f"there is no PCI device {spec.device} on this host"
            verdict = self._verdict(function)
            return None if verdict.possible else f"{spec.device}: {verdict.reason}"
        if not self._candidates():
            return "this host has no GPU that can be passed through"
        return None

    def _verdict(self, function: pci.PciFunction) -> Passthrough:
        return pci.passthrough(self._root, function, self._allowed)

    def _candidates(self) -> list[pci.PciFunction]:
        return [
            f
            for f in pci.list_functions(self._root)
            if pci.kind_of(f.class_code) == "gpu" and self._verdict(f).possible
        ]

    # -- acquire / release -----------------------------------------------------

    async def acquire(self, vm: Vm) -> GpuAssignment | None:
        """Reserve and set up the VM's GPU; None when it asked for none.

        Raises:
            Unsupported: the host no longer has what the VM asked for.
            DeviceInUse: another VM holds the device (or part of its IOMMU group).
            DeviceUnavailable: no instance of a matching vGPU type is left.
            HypervisorError: a sysfs write failed or took longer than the budget.
        """
        spec = vm.gpu
        if not spec.enabled:
            return None
        async with self._lock:
            blocker = self.unsupported(spec)
            if blocker is not None:
                raise Unsupported(blocker, unsupported={"gpu": blocker})
            if spec.type == "vgpu":
                gpu = await self._create_mdev(vm)
            else:
                gpu = await self._bind(vm.id, self._choose(vm.id, spec))
            self._table().update(_held_keys(vm.id, gpu))
            return gpu

    async def release(self, vm_id: str, gpu: GpuAssignment) -> None:
        """Give the VM's devices back to the host (idempotent; failures are logged)."""
        async with self._lock:
            try:
                await self._in_thread(self._undo, gpu)
            finally:
                table = self._table()
                for key in [k for k, holder in table.items() if holder == vm_id]:
                    del table[key]

    def _choose(self, vm_id: str, spec: GpuSpec) -> pci.PciFunction:
        held = self._table()
        if spec.device is not None:
            function = pci.read_function(self._root, spec.device)
            if function is None:
                raise Unsupported(f"there is no PCI device {spec.device} on this host")
            holder = self._group_holder(function, held, vm_id)
            if holder is not None:
                raise DeviceInUse(
                    f"{spec.device} (or its IOMMU group) is in use by VM {holder}",
                    device=spec.device,
                    held_by=holder,
                )
            return function
        for function in self._candidates():
            if self._group_holder(function, held, vm_id) is None:
                return function
        raise DeviceInUse(
            "every GPU that can be passed through is in use",
            held_by=dict(held),
        )

    def _group_holder(
        self, function: pci.PciFunction, held: dict[str, str], vm_id: str
    ) -> str | None:
        members = pci.group_members(self._root, function.iommu_group or "")
        holders = {held[m] for m in members if m in held and held[m] != vm_id}
        return min(holders) if holders else None

    async def _bind(self, vm_id: str, function: pci.PciFunction) -> GpuAssignment:
        members = [
            m
            for m in (
                pci.read_function(self._root, a)
                for a in pci.group_members(self._root, function.iommu_group or "")
            )
            if m is not None and not m.is_pci_bridge
        ]
        gpu = GpuAssignment(
            type="passthrough",
            devices=[m.address for m in members if m.slot == function.slot],
            host_drivers={m.address: m.driver for m in members},
        )
        log.info("%s: binding IOMMU group %s to vfio-pci", vm_id, function.iommu_group)
        try:
            await self._in_thread(self._bind_all, members)
        except BaseException:
            with trio.CancelScope(shield=True), contextlib.suppress(HypervisorError):
                await self._in_thread(self._undo, gpu)
            raise
        return gpu

    async def _create_mdev(self, vm: Vm) -> GpuAssignment:
        instance = mdev_uuid(vm.uuid)
        sysfsdev = self._root / "bus" / "mdev" / "devices" / instance
        types = _matching_types(vm.gpu, pci.list_mdev_types(self._root))
        if sysfsdev.exists():  # left from a QEMU that was not cleaned up: it is ours
            log.warning("%s: reusing existing mdev %s", vm.id, instance)
            chosen = types[0]
        else:
            free = [t for t in types if t.available_instances > 0]
            if not free:
                raise DeviceUnavailable(
                    "no instance of a matching vGPU type is available",
                    types=[t.model_dump() for t in types],
                )
            chosen = free[0]
            create = (
                Path("class/mdev_bus") / chosen.parent / "mdev_supported_types" / chosen.type
            ) / "create"
            await self._in_thread(self._write, create, instance)
        return GpuAssignment(
            type="vgpu", mdev_uuid=instance, mdev_type=chosen.type, sysfsdev=str(sysfsdev)
        )

    # -- sysfs writes (worker thread) -------------------------------------------

    async def _in_thread(self, fn: Callable[..., None], *args: object) -> None:
        try:
            with trio.fail_after(self._timeout_s):
                await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)
        except trio.TooSlowError as err:
            raise HypervisorError(
                f"sysfs did not answer within {self._timeout_s:g} s", step=fn.__name__
            ) from err

    def _write(self, relative: Path, value: str) -> None:
        log.info("sysfs: %s <- %r", relative, value)
        try:
            with open(self._root / relative, "w") as f:
                f.write(value)
        except OSError as err:
            raise HypervisorError(
                f"cannot write {relative}: {err.strerror}", path=str(relative)
            ) from err

    def _bind_all(self, members: list[pci.PciFunction]) -> None:
        devices = Path("bus/pci/devices")
        for member in members:
            if member.driver == _VFIO:
                continue
            self._write(devices / member.address / "driver_override", _VFIO)
            if member.driver is not None:
                self._write(Path("bus/pci/drivers") / member.driver / "unbind", member.address)
            self._write(Path("bus/pci/drivers_probe"), member.address)

    def _undo(self, gpu: GpuAssignment) -> None:
        """Best effort: every step is tried, the first failure is raised at the end."""
        errors: list[HypervisorError] = []

        def attempt(relative: Path, value: str) -> None:
            try:
                self._write(relative, value)
            except HypervisorError as err:
                log.error("releasing a device: %s", err.message)
                errors.append(err)

        if gpu.mdev_uuid is not None:
            remove = Path("bus/mdev/devices") / gpu.mdev_uuid / "remove"
            if (self._root / remove).exists():
                attempt(remove, "1")
        for address in gpu.host_drivers:
            function = pci.read_function(self._root, address)
            if function is None:
                continue
            attempt(Path("bus/pci/devices") / address / "driver_override", "\n")
            if function.driver == _VFIO:
                attempt(Path("bus/pci/drivers") / _VFIO / "unbind", address)
            attempt(Path("bus/pci/drivers_probe"), address)
        if errors:
            raise errors[0]


def _held_keys(vm_id: str, gpu: GpuAssignment) -> dict[str, str]:
    return {key: vm_id for key in [*gpu.host_drivers, *filter(None, [gpu.mdev_uuid])]}


def _matching_types(spec: GpuSpec, types: list[MdevType]) -> list[MdevType]:
    return [t for t in types if t.fits(spec)]


def _vgpu_blocker(spec: GpuSpec, types: list[MdevType]) -> str | None:
    if not types:
        return "this host has no mediated-device (vGPU) capable device"
    if not _matching_types(spec, types):
        offered = ", ".join(sorted({f"{t.type} ({t.name})" for t in types}))
        return f"no vGPU type matches (this host offers: {offered})"
    return None
