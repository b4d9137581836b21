"""What a VM holds on the host besides its QEMU: NIC plan, passt, tap, seed ISO, GPU.

The manager calls these hooks, and nothing else here:

* :meth:`HostResources.prepare` once, before any VM starts or is re-adopted — the
  host rule keeping NAT guests off the host's own addresses (:mod:`.firewall`);

* :meth:`HostResources.unsupported` and :meth:`admit` at create — refuse what the
  host cannot do, fill in the network plan, refuse conflicts (MAC, IP, ports);
* :meth:`acquire` before QEMU starts — check forwarded ports are free, start a NAT
  VM's passt, make a bridge VM's tap and its anti-spoofing rules, write the
  cloud-init seed, bind the GPU; on failure whatever was set up is undone and the
  VM stays as it was;
* :meth:`adopt` when a restarted server finds QEMU still running — find its passt;
* :meth:`release` once QEMU has exited (and on delete and re-adoption cleanup) —
  stop passt, remove the rules and the tap, give devices back. It is idempotent.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import trio

from ...config import Settings
from ...errors import HypervisorError, PortInUse, Unsupported
from ...models import HostDevices, NetworkInfo, Vm, VmSpec
from ..vmfiles.confine import QemuIdentity, unprivileged_identity
from ..vmfiles.layout import VmPaths
from . import cloudinit, firewall, hostnet, network, passt
from .vfio import GpuAllocator

__all__ = ["Held", "HostResources"]

log = logging.getLogger(__name__)


@dataclass
class Held:
    """What :meth:`HostResources.acquire` set up: VM fields to record, and for a NAT
    VM the two ends of its network socket: QEMU's (QEMU gets it; the caller closes this
    copy) and passt's, which :meth:`HostResources.serve_nic` starts passt on while QEMU
    starts (the caller closes it if QEMU could not be started)."""

    fields: dict[str, Any] = field(default_factory=dict)
    nic: socket.socket | None = None
    passt_end: socket.socket | None = None

    def close(self) -> None:
        """Close the ends not handed over yet."""
        for end in (self.nic, self.passt_end):
            if end is not None:
                end.close()


class HostResources:
    """Network, seed and device set-up for VMs, against this host."""

    def __init__(
        self,
        settings: Settings,
        stored_vms: Callable[[], Iterable[Vm]],
        *,
        qemu_identity: QemuIdentity | None = None,
    ) -> None:
        self._settings = settings
        self._net = network.NetworkConfig.from_settings(settings)
        budget = settings.host_command_timeout_s
        self._taps = hostnet.TapManager(
            settings.ip_binary, budget, owner_uid=qemu_identity.uid if qemu_identity else None
        )
        self._nft = firewall.Nftables(settings.nft_binary, budget)
        # passt never runs as root: as root it is the QEMU user even if QEMU is not.
        self._passt_identity = qemu_identity
        if qemu_identity is None and os.geteuid() == 0:
            self._passt_identity = unprivileged_identity()
        self._passt = passt.PasstProcesses(settings.passt_binary, budget, self._passt_identity)
        self._gpus = GpuAllocator(
            settings.sysfs_root, stored_vms, budget, allowed=settings.passthrough_allow
        )

    async def prepare(self) -> None:
        """Install the rule keeping NAT guests off the host (as root; else warn).

        Raises:
            HypervisorError: nft refused it (the server must not run without it).
        """
        if self._passt_identity is None:
            log.warning(
                "the server is not root: NAT guests cannot reach its loopback through "
                "the gateway, but they can reach the host's other addresses (the host "
                "rule needs root; docs/threat-model.md)"
            )
            return
        guard = firewall.host_guard(self._passt_identity.uid, network.NAT_GUEST.network)
        await self._nft.apply(guard)
        log.info("NAT guests are kept off the host (nft table %s)", firewall.HOST_TABLE)

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

    async def acquire(self, vm: Vm, direct_kernel: bool, paths: VmPaths) -> Held:
        """Set up the host side of ``vm``'s next boot.

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
        held = Held()
        try:
            if info is not None and info.type == "nat":  # passt starts beside QEMU
                held.nic, held.passt_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            if info is not None and info.tap is not None and info.bridge is not None:
                await self._taps.create(info.tap, info.bridge)
                await self._nft.apply(firewall.tap_guard(info))
            held.fields["gpu_assignment"] = await self._gpus.acquire(vm)
        except BaseException:
            held.close()
            with trio.CancelScope(shield=True):
                await self._release_network(vm, paths)
            raise
        return held

    # -- live migration (migration_service.py) ---------------------------------

    @staticmethod
    def incoming_nic(vm: Vm) -> tuple[socket.socket, socket.socket] | None:
        """A migration's destination QEMU's NAT NIC: (QEMU's end, passt's end) of a new
        socket, None for a VM without one (a bridge VM gets its tap from
        :meth:`incoming_tap`). Its passt starts in :meth:`hand_over_nic`, once the
        source's has let go of the forwarded ports."""
        if vm.network.type != "nat":
            return None
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    async def incoming_tap(self, vm: Vm) -> NetworkInfo | None:
        """A bridge VM's migration destination: a tap of its own (the name the VM's
        tap has not, :func:`network.other_tap`) on the VM's bridge, with the same
        anti-spoofing rules; the VM's network as it will be. None for other VMs.

        Raises:
            HypervisorError: the tap could not be made (no such bridge here...).
        """
        info = vm.network_info
        if vm.network.type != "bridge" or info is None or info.bridge is None:
            return None
        tap = network.other_tap(vm.id, info.tap)
        moved = info.model_copy(update={"tap": tap})
        await self._taps.create(tap, info.bridge)
        try:
            await self._nft.apply(firewall.tap_guard(moved))
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.drop_tap(tap)
            raise
        return moved

    async def hand_over_nic(
        self, vm: Vm, source: VmPaths, dest: VmPaths, guest_end: socket.socket
    ) -> None:
        """The source QEMU is gone: stop its passt (files at ``source``), start one on
        ``guest_end`` for the destination (at ``dest``), on the same forwarded ports.

        Raises:
            HypervisorError: the new passt could not start (the guest has no network).
        """
        info = vm.network_info
        if info is None:
            guest_end.close()
            return
        await self._passt.stop(source)
        await self._passt.serve(info, dest, guest_end)

    async def serve_nic(self, info: NetworkInfo, paths: VmPaths, guest_end: socket.socket) -> None:
        """A passt on ``guest_end``: a starting VM's (its QEMU starts meanwhile), or one
        that arrived from another node.

        Raises:
            HypervisorError: passt could not start (the guest has no network).
        """
        await self._passt.serve(info, paths, guest_end)

    def adopt(self, vm: Vm, paths: VmPaths) -> None:
        """On re-adoption, find the VM's passt again (it lives as long as QEMU does)."""
        if vm.network.type != "nat":
            return
        pid = passt.find(passt.PasstPaths.for_vm(paths))
        if pid is None:
            log.warning("%s: its passt is gone; the guest has no network", vm.id)
        else:
            log.info("%s: re-adopted passt pid %d", vm.id, pid)

    async def release(self, vm: Vm, paths: VmPaths) -> None:
        """Stop passt, remove the tap and its rules, give devices back (idempotent,
        never raises HM errors)."""
        with trio.CancelScope(shield=True):
            await self._release_network(vm, paths)
            if vm.gpu_assignment is not None:
                try:
                    await self._gpus.release(vm.id, vm.gpu_assignment)
                except HypervisorError as err:
                    log.error("%s: devices not fully given back: %s", vm.id, err.message)

    async def _release_network(self, vm: Vm, paths: VmPaths) -> None:
        if vm.network.type == "nat":
            await self._passt.stop(paths)
        if vm.network.type == "bridge":
            info = vm.network_info
            await self.drop_tap(info.tap if info and info.tap else network.tap_name(vm.id))

    async def drop_tap(self, tap: str) -> None:
        """Remove a tap and its rules (idempotent; failures are logged)."""
        try:
            await self._nft.apply(firewall.unguard(firewall.tap_table(tap)))
        except HypervisorError as err:
            log.error("tap %s: its rules stay: %s %s", tap, err.message, err.details)
        with contextlib.suppress(HypervisorError):
            await self._taps.remove(tap)

    # -- host facts --------------------------------------------------------------

    async def host_devices(self) -> HostDevices:
        return await self._gpus.devices()
