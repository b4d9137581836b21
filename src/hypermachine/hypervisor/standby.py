"""Restores kept ready (docs/snapshots.md): a paused QEMU per VM that already holds a
memory snapshot's RAM, so restoring that snapshot is a switch-over, not a launch.

A standby is a local migration's destination (:mod:`.migration`) whose stream is the
snapshot's RAM file, loaded ahead of time: its own run dir (``<vm id>.m<token>``), its
own swtpm state dir (the TPM state comes in the stream), its own NIC (a NAT VM's passt
starts at the switch, once the running one has let go of the forwarded ports; a bridge
VM's QEMU gets the other tap) and its own top layer on the snapshot's frozen one. It
loads ``late-block-activate``, so it takes its files' locks only when continued, and
waits beside the running QEMU, which goes on as before; its guest runs no code.

A restore of that snapshot (:meth:`Standbys.switch`) retires the running QEMU, points
``disk.qcow2`` at the standby's layer, swaps the run dirs and continues it. The UEFI
VARS come back with the stream (QEMU rewrites the flash file when the guest runs), as
does the vTPM state; only snapshots of a running guest get a standby, so that happens
at the switch.

Standbys are a cache of the host's memory: at most one per VM (its latest memory
snapshot, or the one it was last restored to), made only when the host's budget has
room beside the live VMs and the other standbys, dropped for a VM start that needs the
room (:meth:`Standbys.make_room`), when the VM's QEMU ends, it hibernates or migrates,
or the snapshot goes. One a server restart finds is killed with the migration
leftovers it looks like (``MigrationService.recover``).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import socket
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import trio

from ..concurrently import run_all
from ..config import Settings
from ..errors import HMError, HypervisorError, InsufficientResources
from ..events import EventLog
from ..models import EventType, NetworkInfo, Snapshot, Vm, VmState
from ..security.admission import HostBudget
from ..states import LIVE_STATES
from ..store import Store, utcnow
from . import migration
from .devices.resources import HostResources
from .migration_service import MigrationService
from .platform import tpm
from .qemu import qmp_commands
from .qemu.machine import Machine
from .storage import layers, snapfiles, snapshots
from .vmfiles import nofollow
from .vmfiles.confine import QemuIdentity
from .vmfiles.layout import VmPaths

__all__ = ["Standby", "StandbyHost", "Standbys"]

log = logging.getLogger(__name__)


class StandbyHost(Protocol):
    """The manager as the standbys see it."""

    _settings: Settings
    _store: Store
    _resources: HostResources
    _budget: HostBudget
    _machines: dict[str, Machine]
    events: EventLog
    qemu_identity: QemuIdentity | None

    @property
    def migrations(self) -> MigrationService: ...
    def _paths(self, vm_id: str) -> VmPaths: ...
    def _lock(self, vm_id: str) -> trio.Lock: ...
    def _spawn(self, vm_id: str, fn: Any, *args: Any) -> None: ...
    def _set(self, vm_id: str, state: VmState, reason: str | None, **extra: Any) -> Vm: ...
    async def _supervise(self, machine: Machine) -> None: ...


@dataclass
class Standby:
    """A paused QEMU with a snapshot's RAM loaded, and what it holds on the host."""

    snapshot: str
    taken_at: datetime  # the snapshot's: a later one of the same name is another
    memory_mb: int
    paths: VmPaths  # its own run dir
    generation_id: str  # the VM's after the restore
    tpm_dir: Path | None
    top: str | None = None  # its disk layer, once made
    network_info: NetworkInfo | None = None  # the VM's network once it runs
    own_tap: str | None = None  # a bridge VM's other tap, made for it
    passt_end: socket.socket | None = None
    machine: Machine | None = None

    def holds(self, snapshot: Snapshot) -> bool:
        return (self.snapshot, self.taken_at) == (snapshot.name, snapshot.created_at)


def _unfit(vm: Vm, snapshot: Snapshot) -> str | None:
    """Why a snapshot of ``vm`` gets no standby, or None."""
    if not (snapshot.memory and snapshot.standby):
        return "the snapshot has no RAM, or asked for no standby"
    if snapshot.vm_state is not VmState.RUNNING:
        return "the guest was paused in the snapshot (a restore of it launches QEMU)"
    if vm.state not in (VmState.RUNNING, VmState.PAUSED):
        return f"the VM is {vm.state.value}"
    if vm.gpu_assignment is not None:
        return "the VM holds host devices"
    if vm.security.memory_encryption != "none":
        return "a confidential VM's RAM is not loaded twice"
    return None


class Standbys:
    """The standbys of the manager's VMs, by VM id."""

    def __init__(self, manager: StandbyHost) -> None:
        self._mgr = manager
        self._settings = manager._settings
        self._ready: dict[str, Standby] = {}
        self._making: dict[str, Standby] = {}  # being started (its memory is reserved)
        self._waiting: dict[str, trio.CancelScope] = {}

    # -- what they hold ---------------------------------------------------------

    def held_mb(self) -> int:
        """The memory the standbys hold or are loading."""
        return sum(s.memory_mb for s in (*self._ready.values(), *self._making.values()))

    def layers_of(self, vm_id: str) -> list[str]:
        """The disk layers the VM's standby needs kept."""
        found = (self._ready.get(vm_id), self._making.get(vm_id))
        return [s.top for s in found if s is not None and s.top is not None]

    def holding(self, vm_id: str) -> str | None:
        """The name of the snapshot the VM's standby holds, if one is ready."""
        standby = self._ready.get(vm_id)
        return standby.snapshot if standby is not None else None

    def ready_for(self, vm_id: str, snapshot: Snapshot) -> bool:
        standby = self._ready.get(vm_id)
        return standby is not None and standby.holds(snapshot)

    async def make_room(self, admit: Callable[[HostBudget], None]) -> None:
        """Run ``admit`` with the budget the standbys leave; if that is too little,
        drop them all and run it with the whole budget (they are only a cache).

        Raises:
            What ``admit`` raises with the whole budget.
        """
        budget = self._mgr._budget
        try:
            admit(replace(budget, memory_mb=budget.memory_mb - self.held_mb()))
            return
        except InsufficientResources:
            if not self.held_mb():
                raise
        await self.drop_all("a VM start needed the memory")
        admit(budget)

    # -- making one -------------------------------------------------------------

    def prepare_soon(self, vm_id: str, name: str) -> None:
        """Make a standby of the VM's snapshot ``name`` after a moment (the guest's own
        first steps go first), unless standbys are off."""
        if not self._settings.snapshot_standby:
            return
        self._cancel_waiting(vm_id)
        scope = trio.CancelScope()
        self._waiting[vm_id] = scope
        self._mgr._spawn(vm_id, self._prepare_later, vm_id, name, scope)

    def _cancel_waiting(self, vm_id: str) -> None:
        scope = self._waiting.pop(vm_id, None)
        if scope is not None:
            scope.cancel()

    async def _prepare_later(self, vm_id: str, name: str, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(self._settings.snapshot_standby_after_s)
            async with self._mgr._lock(vm_id):
                if self._waiting.get(vm_id) is scope:
                    del self._waiting[vm_id]
                try:
                    await self._prepare(vm_id, name)
                except (HMError, OSError) as err:
                    self._step(vm_id, "standby_failed", snapshot=name, reason=_reason(err))
                except Exception as err:  # a bug costs the standby, never the VM
                    log.exception("%s: standby of %s failed", vm_id, name)
                    self._step(vm_id, "standby_failed", snapshot=name, reason=repr(err))

    async def _prepare(self, vm_id: str, name: str) -> None:
        vm = self._mgr._store.get_vm(vm_id)
        vm_dir = self._mgr._paths(vm_id).vm_dir
        folder = snapfiles.snapshot_dir(vm_dir, name)
        if not folder.exists:
            return
        snapshot, layer = folder.meta()
        current = self._ready.get(vm_id)
        if current is not None and current.holds(snapshot):
            return
        why_not = _unfit(vm, snapshot)
        if why_not is None:
            await self.drop(vm_id, f"snapshot {name} gets the VM's standby")
            why_not = self._no_room(vm)
        if why_not is not None:
            self._step(vm_id, "standby_skipped", snapshot=name, reason=why_not)
            return
        token = secrets.token_hex(4)
        standby = Standby(
            snapshot=name,
            taken_at=snapshot.created_at,
            memory_mb=vm.memory_mb,
            paths=migration.destination(self._mgr._paths(vm_id), token),
            generation_id=str(uuidlib.uuid4()),
            tpm_dir=vm_dir / f"tpm-{token}" if vm.security.vtpm else None,
        )
        started = trio.current_time()
        self._making[vm_id] = standby
        try:
            await self._start(vm, folder, layer, standby)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._discard(standby)
            raise
        finally:
            del self._making[vm_id]
        self._ready[vm_id] = standby
        ms = round((trio.current_time() - started) * 1000)
        pid = standby.machine.pid if standby.machine is not None else None
        self._step(vm_id, "standby_ready", snapshot=name, pid=pid, ms=ms)

    def _no_room(self, vm: Vm) -> str | None:
        live = [v for v in self._mgr._store.all_vms() if v.state in LIVE_STATES]
        free = self._mgr._budget.memory_mb - sum(v.memory_mb for v in live) - self.held_mb()
        if vm.memory_mb > free:
            return f"the host's memory budget has {max(free, 0)} MiB free, it needs {vm.memory_mb}"
        return None

    async def _start(
        self, vm: Vm, folder: snapfiles.SnapshotDir, layer: str, standby: Standby
    ) -> None:
        mgr = self._mgr
        vm_dir = standby.paths.vm_dir
        owner = mgr.qemu_identity
        standby.top = await layers.create_above(
            self._settings.qemu_img_binary,
            vm_dir,
            layer,
            (owner.uid, owner.gid) if owner is not None else None,
        )
        nic = mgr._resources.incoming_nic(vm)
        qemu_end, standby.passt_end = nic if nic is not None else (None, None)
        try:
            tapped = await mgr._resources.incoming_tap(vm)
            standby.own_tap = tapped.tap if tapped is not None else None
            standby.network_info = tapped or vm.network_info
            as_restored = vm.model_copy(
                update={
                    "generation_id": standby.generation_id,
                    "network_info": standby.network_info,
                }
            )
            standby.machine = await mgr.migrations.destination_qemu(
                as_restored, standby.paths, standby.tpm_dir, qemu_end, top=standby.top
            )
        finally:
            if qemu_end is not None:
                qemu_end.close()  # QEMU holds its own copy
        await qmp_commands.migrate_set_capabilities(standby.machine, {"late-block-activate": True})
        with folder.open_memory() as source:
            try:
                await snapshots.load_memory(
                    standby.machine,
                    source,
                    timeout_s=self._settings.snapshot_timeout_s,
                    announce=snapshots.announces(vm.network_info),
                )
            except HypervisorError as err:  # a refused stream ends QEMU: its log says why
                raise HypervisorError(f"{err.message}: {standby.machine.log_tail()}") from err

    # -- using or dropping one --------------------------------------------------

    async def restore(self, vm: Vm, snapshot: Snapshot) -> bool:
        """Restore ``vm`` to ``snapshot`` by switching to its standby; False (nothing
        done) when none is ready. The caller holds the VM's lock, and it is
        ``restoring``.

        Raises:
            HMError, OSError: the switch failed; the running QEMU may be gone, the
                standby is discarded or killed.
        """
        standby = self._ready.get(vm.id)
        if standby is None or not standby.holds(snapshot):
            return False
        del self._ready[vm.id]
        await self._switch(vm, standby)
        return True

    async def _switch(self, vm: Vm, standby: Standby) -> None:
        mgr = self._mgr
        canonical = mgr._paths(vm.id)
        dest = standby.machine
        assert dest is not None and standby.top is not None
        old_tpm = tpm.state_dir_of(canonical.vm_dir)
        source = mgr._machines.get(vm.id)
        try:
            if source is not None:
                await mgr.migrations.retire(source, canonical, old_tpm)
            old_tap = vm.network_info.tap if vm.network_info is not None else None
            if standby.own_tap is not None and old_tap is not None:
                await mgr._resources.drop_tap(old_tap)
            layers.point_top(canonical.vm_dir, standby.top)
            migration.take_run_dir(standby.paths, canonical)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._discard(standby)
                if source is not None and source.exited.is_set():  # its passt, its tap
                    await mgr._resources.release(vm, canonical)
            raise
        dest.paths = canonical  # its sockets answer under the VM's names now
        if standby.tpm_dir is not None:
            tpm.set_state_dir(canonical.vm_dir, standby.tpm_dir)
            shutil.rmtree(old_tpm, ignore_errors=True)
        mgr._store.update_vm(
            vm.id,
            generation_id=standby.generation_id,
            network_info=standby.network_info,
            pid=dest.pid,
        )
        await mgr._supervise(dest)
        passt_end, standby.passt_end = standby.passt_end, None
        # The guest may run before its passt does: its first frames wait in the socket.
        await run_all(
            partial(self._run, dest),
            partial(mgr.migrations.serve_nic, vm, standby.paths, canonical, passt_end),
        )
        shutil.rmtree(standby.paths.run_dir, ignore_errors=True)  # the old QEMU's, now
        mgr._set(vm.id, VmState.RUNNING, None, pid=dest.pid, started_at=utcnow())

    @staticmethod
    async def _run(machine: Machine) -> None:
        try:
            await qmp_commands.cont(machine)
        except HMError as err:
            machine.fail(f"the standby would not run: {err.message}")
            raise

    async def drop(self, vm_id: str, why: str) -> None:
        """End the VM's standby (if any), and one it was about to make."""
        self._cancel_waiting(vm_id)
        standby = self._ready.pop(vm_id, None)
        if standby is None:
            return
        with trio.CancelScope(shield=True):
            await self._discard(standby)
        self._step(vm_id, "standby_dropped", snapshot=standby.snapshot, reason=why)

    def drop_soon(self, vm_id: str, why: str) -> None:
        """:meth:`drop` from code that cannot wait (a QEMU's exit)."""
        self._cancel_waiting(vm_id)
        if vm_id in self._ready:
            self._mgr._spawn(vm_id, self.drop, vm_id, why)

    async def drop_all(self, why: str) -> None:
        """End every standby, and every one about to be made."""
        for vm_id in list(self._waiting):
            self._cancel_waiting(vm_id)
        for vm_id in list(self._ready):
            await self.drop(vm_id, why)

    async def _discard(self, standby: Standby) -> None:
        """Kill the standby's QEMU and give back all it holds."""
        if standby.machine is not None:
            await standby.machine.discard()
        if standby.passt_end is not None:
            standby.passt_end.close()
        if standby.tpm_dir is not None:
            tpm.stop(tpm.TpmPaths.for_vm(standby.paths, standby.tpm_dir))
            shutil.rmtree(standby.tpm_dir, ignore_errors=True)
        shutil.rmtree(standby.paths.run_dir, ignore_errors=True)
        if standby.own_tap is not None:
            await self._mgr._resources.drop_tap(standby.own_tap)
        if standby.top is not None:  # unless the VM's folder is gone, or it is the top now
            with contextlib.suppress(HMError, OSError):
                if layers.current(standby.paths.vm_dir) != standby.top:
                    with nofollow.Folder(standby.paths.vm_dir) as folder:
                        folder.unlink(standby.top)

    def _step(self, vm_id: str, step: str, **data: Any) -> None:
        self._mgr.events.record(EventType.SNAPSHOT_STEP, vm_id, step=step, **data)


def _reason(err: BaseException) -> str:
    return err.message if isinstance(err, HMError) else str(err)
