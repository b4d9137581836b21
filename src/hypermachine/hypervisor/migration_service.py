"""Live migration of a running VM to a fresh QEMU process: the manager's delegate
(docs/cluster.md).

On one host this moves a guest to a new QEMU (a newer binary, say) while it runs.
The steps, each a ``vm.migration`` event (``step``):

1. **checks** (the request gets these refusals): the VM is running or paused, QEMU
   reports no migration blockers (a VFIO device...), it has no memory encryption.
2. **destination** — a QEMU started ``-incoming defer`` in its own run dir, with its
   own swtpm on an empty state dir (the TPM state travels in the stream) and, for a
   NAT VM, its own end of a new passt socket; for a bridge VM, a tap of its own on the
   same bridge (``hmt…`` and ``hmu…`` take turns), with the same anti-spoofing rules.
   The disk and the UEFI VARS file are the same files: the destination takes them
   over only when it runs.
3. **stream** — RAM and devices over a socket pair (:mod:`.migration`); the guest runs
   meanwhile and pauses only for the last pass.
4. **switch-over** — ``migration.committed`` is written, the TPM dir switched, the
   destination continued: from here it is the VM (a bridge VM's record names the new
   tap). The source is quit (with its tap), the run dirs swapped, a new passt serves
   the destination's NIC, and supervision moves to the new QEMU. The event
   ``completed`` carries QEMU's total time and downtime.

Anything failing before the switch-over ends the destination and leaves the guest
running in its QEMU as before; the request gets the error.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import psutil
import trio

from ..errors import HMError, HypervisorError, MigrationRefused, NodeNotFound
from ..models import EventType, MigrateRequest, Migration, NetworkInfo, Vm, VmState
from ..states import Action, transition
from . import migration, migration_outgoing
from .devices import hostnet, network
from .migration_outgoing import OutgoingHost
from .platform import tpm, vmplatform
from .platform.host import HostFacts
from .qemu import qmp_commands
from .qemu.argv import BootSource, Platform
from .qemu.machine import ArgvBuilder, Machine, adopt_pid, spawn_qemu
from .qemu.qmp import QmpBridge
from .storage.snapshots import migration_blockers
from .vmfiles.layout import VmPaths

__all__ = ["MigrationService"]

log = logging.getLogger(__name__)


class MigrationHost(OutgoingHost, Protocol):
    """The manager as the migration service sees it."""

    _bridge: QmpBridge
    host: HostFacts

    def _machine(self, vm_id: str) -> Machine: ...
    def _live(self, vm: Vm) -> Vm: ...
    def _announce(self) -> None: ...
    async def _reach_folders(self) -> None: ...
    async def _supervise(self, machine: Machine) -> None: ...
    def boot_of(self, vm: Vm) -> BootSource: ...
    def qemu_argv(
        self,
        vm: Vm,
        boot: BootSource,
        paths: VmPaths,
        platform: Platform,
        nic_fd: int | None,
        *,
        incoming: bool,
        top: str | None = None,
    ) -> ArgvBuilder: ...


class MigrationService:
    """Live migration of the manager's VMs (on this host, for now)."""

    def __init__(self, manager: MigrationHost) -> None:
        self._mgr = manager
        self._settings = manager._settings

    def _step(self, vm_id: str, step: str, **data: Any) -> None:
        self._mgr.events.record(EventType.MIGRATION_STEP, vm_id, step=step, **data)

    # -- the operation -----------------------------------------------------------

    async def migrate(self, vm_id: str, request: MigrateRequest) -> Migration:
        """Move the running VM to a new QEMU process while it runs.

        Raises:
            NodeNotFound (another node: this server is not in a cluster), InvalidState,
            MigrationRefused, HypervisorError.
        """
        here = self._settings.node_name
        elsewhere = request.node if request.node not in (None, here) else None
        if elsewhere is not None and not self._settings.etcd_urls:
            raise NodeNotFound(
                f"no node {elsewhere!r}: this server is a single host ({here})",
                node=request.node,
            )

        async def steps(vm: Vm, begin: Callable[[], None]) -> Migration:
            transition(vm.state, Action.MIGRATE)
            source = self._mgr._machine(vm.id)
            refuse(vm, await migration_blockers(source))
            nic = self._mgr._resources.incoming_nic(vm)
            if elsewhere is not None and nic is not None:
                for end in nic:
                    end.close()  # the destination node makes its own
            begin()
            if elsewhere is not None:
                return await migration_outgoing.to_node(self._mgr, vm, source, elsewhere)
            return await self._locally(vm, source, nic)

        return await (await self._mgr.snapshots._job(vm_id, steps)).result()

    async def _locally(
        self, vm: Vm, source: Machine, nic: tuple[socket.socket, socket.socket] | None
    ) -> Migration:
        canonical = self._mgr._paths(vm.id)
        token = secrets.token_hex(4)
        dest_paths = migration.destination(canonical, token)
        old_tpm = tpm.state_dir_of(canonical.vm_dir)
        new_tpm = canonical.vm_dir / f"tpm-{token}" if vm.security.vtpm else None
        qemu_end, passt_end = nic if nic is not None else (None, None)
        self._step(vm.id, "started", node=self._settings.node_name)
        dest: Machine | None = None
        tapped: NetworkInfo | None = None
        try:
            try:
                tapped = await self._mgr._resources.incoming_tap(vm)
                dest_vm = vm if tapped is None else vm.model_copy(update={"network_info": tapped})
                dest = await self.destination_qemu(dest_vm, dest_paths, new_tpm, qemu_end)
            finally:
                if qemu_end is not None:
                    qemu_end.close()  # the destination QEMU holds its own copy
            self._step(vm.id, "destination_ready", pid=dest.pid)
            figures = await migration.stream(
                source,
                dest,
                bandwidth_mib_s=self._settings.migration_bandwidth_mib_s,
                timeout_s=self._settings.migration_timeout_s,
            )
            streamed = trio.current_time()
            migration.mark_committed(dest_paths)
            if tapped is not None:  # a restart from here on keeps the destination's tap
                self._mgr._store.update_vm(vm.id, network_info=tapped)
            if new_tpm is not None:
                tpm.set_state_dir(canonical.vm_dir, new_tpm)
            if vm.state is VmState.RUNNING:
                await qmp_commands.cont(dest)
            switchover_ms = (trio.current_time() - streamed) * 1000
        except BaseException as err:
            if passt_end is not None:
                passt_end.close()
            with trio.CancelScope(shield=True):
                await self._undo(vm, source, dest, dest_paths, new_tpm, old_tpm)
                if tapped is not None and tapped.tap is not None:
                    await self._mgr._resources.drop_tap(tapped.tap)
                reason = err.message if isinstance(err, HMError) else repr(err)
                self._step(vm.id, "failed", reason=reason)
            raise
        with trio.CancelScope(shield=True):  # the destination is the VM now: finish
            await self.retire(source, canonical, old_tpm)
            if tapped is not None and vm.network_info is not None and vm.network_info.tap:
                await self._mgr._resources.drop_tap(vm.network_info.tap)  # the source's
            migration.exchange(dest_paths.run_dir, canonical.run_dir)
            migration.clear_committed(canonical)
            dest.paths = canonical  # its sockets answer under the VM's names now
            await self.serve_nic(vm, dest_paths, canonical, passt_end)
            shutil.rmtree(dest_paths.run_dir, ignore_errors=True)  # the source's, now
            if new_tpm is not None:
                shutil.rmtree(old_tpm, ignore_errors=True)
            await self._mgr._supervise(dest)
            moved = self._mgr._store.update_vm(vm.id, pid=dest.pid)
            self._mgr._announce()
        node = self._settings.node_name
        answer, data = migration.finished(
            self._mgr._live(moved), figures, source_node=node, node=node,
            switchover_ms=switchover_ms,
        )  # fmt: skip
        self._step(vm.id, "completed", pid=dest.pid, **data)
        return answer

    async def destination_qemu(
        self,
        vm: Vm,
        paths: VmPaths,
        tpm_dir: Path | None,
        nic: socket.socket | None,
        top: str | None = None,
    ) -> Machine:
        """A QEMU waiting for the VM's state (``-incoming defer``), QMP connected; a
        bridge VM's NIC on the tap ``vm.network_info`` names; ``top``: its own disk
        top layer (a standby's), not the VM's.

        Raises:
            HMError: its swtpm, its firmware or QEMU itself would not start.
        """
        mgr = self._mgr
        boot = mgr.boot_of(vm)
        await mgr._reach_folders()
        platform = await vmplatform.launch_platform(
            vm, boot, paths, mgr.host, self._settings, mgr.qemu_identity, incoming_tpm=tpm_dir
        )
        nic_fd = nic.fileno() if nic is not None else None
        argv = mgr.qemu_argv(vm, boot, paths, platform, nic_fd, incoming=True, top=top)
        passed = () if nic_fd is None else (nic_fd,)
        tap = vm.network_info.tap if vm.network_info is not None else None
        try:
            tap_fd = hostnet.open_tap(tap) if tap is not None else None
            child = spawn_qemu(argv, paths, mgr.qemu_identity, tap_fd, pass_fds=passed)
        except ValueError as err:
            raise HypervisorError(f"the destination QEMU could not be started: {err}") from err
        machine = Machine(vm_id=vm.id, pid=child.pid, paths=paths, child=child)
        try:
            await machine.connect(mgr._bridge, self._settings.qmp_connect_timeout_s)
        except BaseException:
            with trio.CancelScope(shield=True):
                await machine.discard()
            raise
        return machine

    async def _undo(
        self,
        vm: Vm,
        source: Machine,
        dest: Machine | None,
        dest_paths: VmPaths,
        new_tpm: Path | None,
        old_tpm: Path,
    ) -> None:
        """Before the switch-over: end the destination, let the source go on."""
        if dest is not None:
            await dest.discard()
        tpm.stop(tpm.TpmPaths.for_vm(dest_paths, new_tpm))
        if new_tpm is not None:
            if tpm.state_dir_of(dest_paths.vm_dir) == new_tpm:
                tpm.set_state_dir(dest_paths.vm_dir, old_tpm)
            shutil.rmtree(new_tpm, ignore_errors=True)
        shutil.rmtree(dest_paths.run_dir, ignore_errors=True)
        await migration.resume_source(source, vm)

    async def retire(self, source: Machine, paths: VmPaths, tpm_dir: Path) -> None:
        """Quit the source QEMU without its exit changing the VM; its swtpm goes with it."""
        source.report.handed_over = True
        await source.terminate(self._settings.kill_grace_s)
        await source.finished.wait()  # its guest agent client and console tasks ended
        tpm.stop(tpm.TpmPaths.for_vm(paths, tpm_dir))

    async def serve_nic(
        self, vm: Vm, old: VmPaths, new: VmPaths, passt_end: socket.socket | None
    ) -> None:
        """The old QEMU is gone: a new passt (the old one stopped) serves the new QEMU's
        NIC; a failure is an event, the guest runs on without network."""
        if passt_end is None:
            return
        try:
            await self._mgr._resources.hand_over_nic(vm, old, new, passt_end)
        except HMError as err:  # the guest runs on, without network: say so
            log.error("%s: no network after the migration: %s", vm.id, err.message)
            self._step(vm.id, "network_lost", reason=err.message)

    # -- after a server restart --------------------------------------------------

    async def recover(self, vm: Vm) -> bool:
        """Finish or undo a migration a server restart cut short; True if there was one.

        A committed destination is the VM: its source is killed and the run dirs
        swapped. An uncommitted one is killed and removed (the source goes on). A
        bridge VM keeps the tap its record names (the destination's once committed)
        and loses the other.
        """
        canonical = self._mgr._paths(vm.id)
        found = migration.leftovers(canonical)
        for dest in found:
            if migration.is_committed(dest):
                _kill(adopt_pid(canonical, vm.uuid))
                migration.take_run_dir(dest, canonical)
                migration.clear_committed(canonical)
                log.warning("%s: finished a migration the server restart cut short", vm.id)
            else:
                _kill(adopt_pid(dest, vm.uuid))
                log.warning("%s: undid a migration the server restart cut short", vm.id)
            shutil.rmtree(dest.run_dir, ignore_errors=True)
        if found:
            current = tpm.state_dir_of(canonical.vm_dir)
            for stale in canonical.vm_dir.glob("tpm-*"):
                if stale != current:
                    shutil.rmtree(stale, ignore_errors=True)
            kept = self._mgr._store.get_vm(vm.id).network_info
            if vm.network.type == "bridge" and kept is not None:
                await self._mgr._resources.drop_tap(network.other_tap(vm.id, kept.tap))
        return bool(found)


def refuse(vm: Vm, blockers: list[str]) -> None:
    """Raise when ``vm`` cannot be live-migrated.

    Raises:
        MigrationRefused: memory encryption (QEMU cannot move SEV/TDX memory), or QEMU's
            migration blockers, quoted.
    """
    if vm.security.memory_encryption != "none":
        kind = vm.security.memory_encryption
        raise MigrationRefused(
            f"a confidential VM ({kind}) is not live-migrated: QEMU cannot move its "
            "encrypted memory",
            reasons=[f"memory_encryption {kind}"],
        )
    if blockers:
        raise MigrationRefused(
            f"QEMU cannot migrate this VM: {'; '.join(blockers)}", reasons=blockers
        )


def _kill(pid: int | None) -> None:
    if pid is not None:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
