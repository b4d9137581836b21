"""What a VM holds on the host besides its QEMU: NIC plan, tap, seed ISO, GPU.

The manager calls four hooks, and nothing else here:

* :meth:`HostResources.unsupported` and :meth:`admit` at create — refuse what the
  host cannot do, fill in the network plan, refuse conflicts (MAC, IP, ports);
* :meth:`acquire` before QEMU starts — check forwarded ports are free, make the tap,
  write the cloud-init seed, bind the GPU; on failure whatever was set up is undone
  and the VM stays as it was;
* :meth:`release` once QEMU has exited (and on delete and re-adoption cleanup) —
  delete the tap and give devices back. It is idempotent.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import trio

from ..config import Settings
from ..errors import HypervisorError, PortInUse, Unsupported
from ..models import HostDevices, Vm, VmSpec
from . import cloudinit, hostnet, network
from .layout import VmPaths
from .vfio import GpuAllocator

__all__ = ["HostResources"]

log = logging.getLogger(__name__)


class HostResources:
    """Network, seed and device set-up for VMs, against this host."""

    def __init__(
        self,
        settings: Settings,
        stored_vms: Callable[[], Iterable[Vm]],
        *,
        qemu_uid: int | None = None,
    ) -> None:
        self._settings = settings
        self._net = network.NetworkConfig.from_settings(settings)
        self._taps = hostnet.TapManager(
            settings.ip_binary, settings.host_command_timeout_s, owner_uid=qemu_uid
        )
        self._gpus = GpuAllocator(
            settings.sysfs_root,
            stored_vms,
            settings.host_command_timeout_s,
            allowed=settings.passthrough_allow,
        )

    # -- create ----------------------------------------------------------------

    def unsupported(self, spec: VmSpec) -> dict[str, str]:
        """Field -> reason for everything network/GPU the host cannot do for ``spec``."""
        reasons: dict[str, str] = {}
        if spec.network.type == "bridge":
            try:
                bridge = self._net.bridge(spec.network.bridge)
            except Unsupported as err:
                reasons["network.type"] = err.message
            else:
                if not hostnet.is_bridge(self._settings.sysfs_root, bridge.name):
                    reasons["network.bridge"] = f"host bridge {bridge.name} does not exist"
        gpu = self._gpus.unsupported(spec.gpu)
        if gpu is not None:
            reasons["gpu"] = gpu
        return reasons

    def admit(self, vm: Vm, others: Iterable[Vm]) -> Vm:
        """``vm`` with its network planned; refuses a MAC/IP/port that is taken.

        Raises:
            ValidationFailed, Unsupported, AddressInUse, PortInUse.
        """
        spec, info = network.plan(vm.network, vm.id, vm.uuid, self._net, others)
        self._check_ports_free(info.forwards)
        return vm.model_copy(update={"network": spec, "network_info": info})

    @staticmethod
    def _check_ports_free(forwards: Iterable[Any]) -> None:
        for f in forwards:
            if not hostnet.port_free(f.host_address, f.host_port, f.protocol):
                raise PortInUse(
                    f"host port {f.protocol}/{f.host_port} on {f.host_address} is already "
                    "in use on this host",
                    field="network.ports",
                    port=f.host_port,
                )

    # -- start / exit ----------------------------------------------------------

    async def acquire(self, vm: Vm, direct_kernel: bool, paths: VmPaths) -> dict[str, Any]:
        """Set up the host side of ``vm``'s next boot; the VM fields to record.

        Raises:
            PortInUse, Unsupported, DeviceInUse, DeviceUnavailable, HypervisorError.
        """
        info = vm.network_info
        if info is not None:
            self._check_ports_free(info.forwards)
        blockers = self.unsupported(vm)
        if blockers:
            raise Unsupported(
                "this host cannot start the VM: "
                + "; ".join(f"{k}: {v}" for k, v in blockers.items()),
                unsupported=blockers,
            )
        paths.vm_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        await trio.to_thread.run_sync(cloudinit.write_seed, vm, direct_kernel, paths)
        if info is not None and info.tap is not None and info.bridge is not None:
            await self._taps.create(info.tap, info.bridge)
        try:
            gpu = await self._gpus.acquire(vm)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._remove_tap(vm)
            raise
        return {"gpu_assignment": gpu}

    async def release(self, vm: Vm) -> None:
        """Delete the VM's tap and give its devices back (idempotent, never raises HM errors)."""
        with trio.CancelScope(shield=True):
            await self._remove_tap(vm)
            if vm.gpu_assignment is not None:
                try:
                    await self._gpus.release(vm.id, vm.gpu_assignment)
                except HypervisorError as err:
                    log.error("%s: devices not fully given back: %s", vm.id, err.message)

    async def _remove_tap(self, vm: Vm) -> None:
        if vm.network.type == "bridge":
            with contextlib.suppress(HypervisorError):
                await self._taps.remove(network.tap_name(vm.id))

    # -- host facts --------------------------------------------------------------

    async def host_devices(self) -> HostDevices:
        return await self._gpus.devices()
