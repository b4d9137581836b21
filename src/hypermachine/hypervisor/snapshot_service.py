"""Snapshots, restore, fork and hibernate: the service the manager delegates to.

Every operation runs as a task of the manager (not of the request), under the VM's
lock, so a client that hangs up cannot leave a VM paused half-way; the request waits
for it or (``wait: false``) answers once the checks have passed. Files are laid out by
:mod:`.layers` (the disk chain) and :mod:`.snapfiles` (snapshot folders, the resume
image); QEMU is driven by :mod:`.snapshots`. Each step is an event
(``vm.snapshot`` with ``step``) and the VM is ``snapshotting``/``restoring`` meanwhile.

Resuming saved RAM is one path for all: a hibernated VM, a fork's child and a restored
VM each have a resume image, and their next start launches QEMU with ``-incoming``
from it (``Manager._start_locked``). The image is dropped once the guest runs again, so
a failed resume leaves the VM ``hibernated`` and restorable.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import uuid as uuidlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, Protocol, TypeVar

import trio

from ..concurrently import run_all
from ..config import Settings
from ..errors import (
    AddressInUse,
    ClusterUnavailable,
    HMError,
    HypervisorError,
    NameTaken,
    PortInUse,
    QuotaExceeded,
    SnapshotNotFound,
    ValidationFailed,
)
from ..events import EventLog
from ..models import (
    EventType,
    ExecRequest,
    ForkRequest,
    NetworkSpec,
    PortForward,
    Snapshot,
    SnapshotRef,
    SnapshotRequest,
    Vm,
    VmSpec,
    VmState,
)
from ..security.admission import check_storage
from ..states import Action, check
from ..store import Store, utcnow
from .devices import hostnet
from .devices.resources import HostResources
from .guest.service import GuestService
from .platform import tpm
from .ports import GuardLike, StorageCountLike
from .qemu import qmp_commands
from .qemu.machine import Machine
from .storage import layers, snapfiles, snapshots
from .storage.snapfiles import Resume, SnapshotDir
from .vmfiles.confine import QemuIdentity
from .vmfiles.layout import VmPaths

__all__ = ["SnapshotHost", "SnapshotService", "StandbysLike"]

log = logging.getLogger(__name__)

T = TypeVar("T")
S = VmState
_LIVE = (S.RUNNING, S.PAUSED)
# How long a forked child's guest agent may take to answer before its NIC keeps the
# parent's MAC (reported as an event).
_IDENTITY_AGENT_WAIT_S = 60.0


@dataclass
class _Outcome(Generic[T]):
    """The result of an operation running in the manager's nursery."""

    done: trio.Event = field(default_factory=trio.Event)
    value: T | None = None
    error: HMError | None = None

    async def result(self) -> T:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


class StandbysLike(Protocol):
    """Restores kept ready (``standby.Standbys``) as the snapshot service uses them."""

    def ready_for(self, vm_id: str, snapshot: Snapshot) -> bool: ...
    def layers_of(self, vm_id: str) -> list[str]: ...
    def holding(self, vm_id: str) -> str | None: ...
    def prepare_soon(self, vm_id: str, name: str) -> None: ...
    async def drop(self, vm_id: str, why: str) -> None: ...
    async def restore(self, vm: Vm, snapshot: Snapshot) -> bool: ...


class SnapshotHost(Protocol):
    """The manager as the snapshot service sees it."""

    _settings: Settings
    _store: Store
    _guard: GuardLike | None
    _resources: HostResources
    storage_count: StorageCountLike | None
    _machines: dict[str, Machine]
    events: EventLog
    guest: GuestService
    qemu_identity: QemuIdentity | None
    standbys: StandbysLike

    def _paths(self, vm_id: str) -> VmPaths: ...
    async def _reach_folders(self) -> None: ...
    def _lock(self, vm_id: str) -> trio.Lock: ...
    def _machine(self, vm_id: str) -> Machine: ...
    def _set(self, vm_id: str, state: VmState, reason: str | None, **extra: Any) -> Vm: ...
    async def _start_locked(self, vm_id: str, *, resuming: bool = False) -> Vm: ...
    async def start_task(self, fn: Any) -> None: ...
    async def wait_started(self, vm_id: str, timeout_s: float) -> Vm: ...


class SnapshotService:
    """Snapshots, restore, fork and hibernation of the manager's VMs."""

    def __init__(self, manager: SnapshotHost) -> None:
        self._mgr = manager
        self._settings = manager._settings

    # -- running an operation ----------------------------------------------------

    async def _job(
        self, vm_id: str, steps: Callable[[Vm, Callable[[], None]], Awaitable[T]]
    ) -> _Outcome[T]:
        """Run ``steps`` in the manager's nursery under the VM's lock. Errors raised
        before ``steps`` calls its ``begin`` argument go to the caller; later ones land
        in the outcome."""
        outcome: _Outcome[T] = _Outcome()

        async def task(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            started = False

            def begin() -> None:
                nonlocal started
                if not started:
                    started = True
                    task_status.started()

            try:
                async with self._mgr._lock(vm_id):
                    vm = self._mgr._store.get_vm(vm_id)
                    outcome.value = await steps(vm, begin)
                    await self.count_storage(vm.tenant)  # its files came or went
            except HMError as err:
                if not started:
                    raise
                outcome.error = err
            except Exception as err:  # a bug must not take the manager's nursery down
                if not started:
                    raise
                log.exception("%s: snapshot operation failed", vm_id)
                outcome.error = HypervisorError(f"the operation failed: {err}")
            finally:
                outcome.done.set()
            begin()

        # Not the manager's VM-task guard: a refusal before the task reports ready must
        # reach the caller (NAME_TAKEN, 400s); after that, the task contains itself above.
        await self._mgr.start_task(task)
        return outcome

    def _step(self, vm_id: str, step: str, **data: Any) -> None:
        self._mgr.events.record(EventType.SNAPSHOT_STEP, vm_id, step=step, **data)

    def _vm_dir(self, vm_id: str) -> Any:
        return self._mgr._paths(vm_id).vm_dir

    def _owner(self) -> tuple[int, int] | None:
        identity = self._mgr.qemu_identity
        return (identity.uid, identity.gid) if identity is not None else None

    # -- reading -----------------------------------------------------------------

    def of_vm(self, vm_id: str) -> list[Snapshot]:
        """The VM's complete snapshots, oldest first (the caller owns the VM)."""
        return [self._described(vm_id, d) for d in snapfiles.list_snapshots(self._vm_dir(vm_id))]

    def get(self, vm_id: str, name: str) -> Snapshot:
        """Raises: SnapshotNotFound."""
        return self._described(vm_id, self._dir(vm_id, name))

    def _described(self, vm_id: str, folder: SnapshotDir) -> Snapshot:
        snapshot = self._sized(folder)
        return snapshot.model_copy(update={"ready": self._mgr.standbys.ready_for(vm_id, snapshot)})

    def _dir(self, vm_id: str, name: str) -> SnapshotDir:
        found = snapfiles.snapshot_dir(self._vm_dir(vm_id), name)
        if not found.exists:
            raise SnapshotNotFound(f"VM {vm_id} has no snapshot {name!r}", snapshot=name)
        return found

    @staticmethod
    def _sized(folder: SnapshotDir) -> Snapshot:
        snapshot, layer = folder.meta()
        return snapshot.model_copy(update={"size_bytes": snapfiles.snapshot_bytes(folder, layer)})

    def _keep_layers(self, vm_id: str) -> list[str]:
        """The layers something still needs: the top, every snapshot's, the standby's."""
        vm_dir = self._vm_dir(vm_id)
        return [
            layers.current(vm_dir),
            *(d.meta()[1] for d in snapfiles.list_snapshots(vm_dir)),
            *self._mgr.standbys.layers_of(vm_id),
        ]

    # -- storage quota -----------------------------------------------------------

    def _tenant_usage(self, tenant: str) -> int:
        dirs = [self._vm_dir(v.id) for v in self._mgr._store.all_vms() if v.tenant == tenant]
        return snapfiles.allocated_bytes(dirs)

    def usage_by_tenant(self) -> dict[str, int]:
        """The bytes each tenant's VM folders hold on this host."""
        tenants = {vm.tenant for vm in self._mgr._store.all_vms()}
        return {tenant: self._tenant_usage(tenant) for tenant in sorted(tenants)}

    async def _check_storage(self, vm: Vm) -> None:
        """Refuse when the tenant's VMs hold more disk than its tier allows: on this host,
        or in a cluster on every node together (this node's bytes are then counted).

        Raises:
            QuotaExceeded, ClusterUnavailable (the cluster's count cannot be read).
        """
        guard = self._mgr._guard
        quota = guard.storage_quota_bytes() if guard is not None else 0
        used = self._tenant_usage(vm.tenant)
        cluster = self._mgr.storage_count
        if cluster is None:
            check_storage(vm.tenant, used, quota, where="on this host")
        else:
            await cluster.admit(vm.tenant, used, quota)

    async def count_storage(self, tenant: str) -> None:
        """Tell the cluster (if any) what the tenant's VMs hold here now. Not reaching
        it is logged, not raised (the files have come or gone already): the count keeps
        its last value until this node's next write for the tenant, or its start."""
        cluster = self._mgr.storage_count
        if cluster is None:
            return
        try:
            await cluster.record(tenant, self._tenant_usage(tenant))
        except ClusterUnavailable as err:
            log.warning("tenant %s: its storage count here is stale: %s", tenant, err.message)

    # -- snapshot ----------------------------------------------------------------

    async def snapshot(self, vm_id: str, request: SnapshotRequest) -> Snapshot:
        """Take a snapshot (disk; with ``memory`` of a live VM, RAM and devices too).

        Raises:
            InvalidState, NameTaken, SnapshotRefused, QuotaExceeded, ClusterUnavailable,
            HypervisorError.
        """

        async def steps(vm: Vm, begin: Callable[[], None]) -> Snapshot:
            check(vm.state, Action.SNAPSHOT)
            vm_dir = self._vm_dir(vm.id)
            if snapfiles.snapshot_dir(vm_dir, request.name).taken:
                raise NameTaken(
                    f"VM {vm.id} already has a snapshot {request.name!r}", name=request.name
                )
            machine = self._mgr._machines.get(vm.id) if vm.state in _LIVE else None
            memory = request.memory and machine is not None
            if memory and machine is not None:
                snapshots.refuse_memory(vm, await snapshots.migration_blockers(machine))
            await self._check_storage(vm)
            begin()
            published = await self._capture(
                vm, request.name, machine, memory=memory, standby=request.standby, publish=True
            )
            snapshot = self._sized(published)
            self._step(vm.id, "completed", snapshot=request.name, size_bytes=snapshot.size_bytes)
            try:
                await self._check_storage(vm)
            except (QuotaExceeded, ClusterUnavailable) as err:  # never kept uncounted
                published.remove()
                self._step(vm.id, "deleted", snapshot=request.name, reason=err.message)
                raise
            self._keep_ready(vm.id, snapshot)
            return snapshot

        before = self._mgr._store.get_vm(vm_id).state
        outcome = await self._job(vm_id, steps)
        if not request.wait:
            return Snapshot(
                name=request.name,
                vm_id=vm_id,
                created_at=utcnow(),
                memory=request.memory and before in _LIVE,
                size_bytes=0,
                vm_state=before,
                complete=False,
            )
        return await outcome.result()

    async def _capture(
        self,
        vm: Vm,
        name: str,
        machine: Machine | None,
        *,
        memory: bool,
        standby: bool = False,
        publish: bool = False,
    ) -> SnapshotDir:
        """Freeze the disk, copy VARS/TPM and (``memory``) save RAM into a partial
        snapshot folder, listed once ``publish``ed; the VM is back in its state afterwards
        (after the publication, so a waiter on its state finds the snapshot), even on
        failure."""
        before = vm.state
        vm_dir = self._vm_dir(vm.id)
        folder = snapfiles.snapshot_dir(vm_dir, name, partial=True)
        folder.make()  # fresh: whatever an earlier failure left is removed
        # Written first: a server restarted mid-snapshot reads the state to go back to.
        stub = Snapshot(
            name=name, vm_id=vm.id, created_at=utcnow(), memory=memory, size_bytes=0,
            vm_state=before, standby=standby and memory,
        )  # fmt: skip
        folder.write_meta(stub, layer="")
        self._mgr._set(vm.id, S.SNAPSHOTTING, None)
        self._step(vm.id, "started", snapshot=name, memory=memory)
        paused = memory and before is S.RUNNING and machine is not None
        try:
            if paused and machine is not None:
                await qmp_commands.stop(machine)
                self._step(vm.id, "paused", snapshot=name)
            if machine is not None:
                # QEMU opens the new layer by path: its folders must still be reachable
                # to it (a chmod of a parent since the launch resets the ACL's mask).
                await self._mgr._reach_folders()
                layer = await snapshots.freeze_live(
                    machine, self._settings.qemu_img_binary, vm_dir, self._owner()
                )
            else:
                layer = await snapshots.freeze_stopped(self._settings.qemu_img_binary, vm_dir)
            self._step(vm.id, "disk_frozen", snapshot=name, layer=layer)
            snapfiles.copy_platform(vm_dir, tpm.state_dir_of(vm_dir), folder)
            if memory and machine is not None:
                await self._save_memory(machine, folder)
                self._step(vm.id, "memory_saved", snapshot=name, bytes=folder.memory_size())
            folder.write_meta(stub.model_copy(update={"created_at": utcnow()}), layer=layer)
            if publish:
                folder = folder.publish()
        except BaseException as err:
            with trio.CancelScope(shield=True):
                folder.remove()
                await self._back_to(vm.id, before, machine, paused)
                reason = err.message if isinstance(err, HMError) else repr(err)
                self._step(vm.id, "failed", snapshot=name, reason=reason)
            raise
        await self._back_to(vm.id, before, machine, paused)
        return folder

    async def _save_memory(self, machine: Machine, into: snapfiles.StateFolder) -> None:
        with into.new_memory() as target:
            await snapshots.save_memory(
                machine,
                target,
                bandwidth_mib_s=self._settings.migration_bandwidth_mib_s,
                timeout_s=self._settings.snapshot_timeout_s,
            )

    async def _back_to(
        self, vm_id: str, state: VmState, machine: Machine | None, paused: bool
    ) -> None:
        if paused and machine is not None:
            with contextlib.suppress(HypervisorError):
                await qmp_commands.cont(machine)
            self._step(vm_id, "resumed")
        if not (machine is not None and machine.exited.is_set()):
            self._mgr._set(vm_id, state, None)

    # -- delete ------------------------------------------------------------------

    async def delete(self, vm_id: str, name: str) -> None:
        """Drop a snapshot; its disk layer goes too unless the VM's chain still uses it.

        Raises: SnapshotNotFound.
        """
        async with self._mgr._lock(vm_id):
            folder = self._dir(vm_id, name)
            if self._mgr.standbys.holding(vm_id) == name:
                await self._mgr.standbys.drop(vm_id, f"snapshot {name} is deleted")
            folder.remove()
            vm_dir = self._vm_dir(vm_id)
            dropped = layers.collect(vm_dir, self._keep_layers(vm_id))
            self._step(vm_id, "deleted", snapshot=name, layers_dropped=dropped)
            await self.count_storage(self._mgr._store.get_vm(vm_id).tenant)

    # -- restore -----------------------------------------------------------------

    async def restore(self, vm_id: str, name: str, *, wait: bool) -> Vm:
        """Return the VM to the snapshot: its disk, and RAM for a memory snapshot (the VM
        ends running or paused as it was; a disk-only snapshot leaves it stopped).

        Raises:
            SnapshotNotFound, InvalidState, HypervisorError.
        """

        async def steps(vm: Vm, begin: Callable[[], None]) -> Vm:
            check(vm.state, Action.RESTORE)
            folder = self._dir(vm.id, name)
            begin()
            self._mgr._set(vm.id, S.RESTORING, None)
            self._step(vm.id, "restore_started", snapshot=name)
            try:
                return await self._restore(vm, folder)
            except HMError as err:  # QEMU is gone: restorable if the RAM is staged
                state = S.HIBERNATED if self.pending_resume(vm) is not None else S.STOPPED
                self._mgr._set(vm.id, state, f"restore failed: {err.message}")
                self._step(vm.id, "failed", snapshot=name, reason=err.message)
                raise

        outcome = await self._job(vm_id, steps)
        vm = await outcome.result()
        if wait and vm.state is S.RESTORING:
            return await self._mgr.wait_started(vm_id, self._settings.snapshot_timeout_s)
        return vm

    async def _restore(self, vm: Vm, folder: SnapshotDir) -> Vm:
        """Switch to the snapshot's standby if one is ready; else end QEMU, put a new top
        on the snapshot's layer, restore VARS/TPM and (memory snapshots) resume the
        saved RAM in a new QEMU."""
        snapshot, layer = folder.meta()
        name = snapshot.name
        vm_dir = self._vm_dir(vm.id)
        try:
            switched = await self._mgr.standbys.restore(vm, snapshot)
        except (HMError, OSError) as err:  # the usual way, from wherever it stopped
            reason = err.message if isinstance(err, HMError) else str(err)
            self._step(vm.id, "standby_failed", snapshot=name, reason=reason)
            switched = False
        if switched:
            layers.collect(vm_dir, self._keep_layers(vm.id))
            self._step(vm.id, "restored", snapshot=name, standby=True)
            self._keep_ready(vm.id, snapshot)
            return self._mgr._store.get_vm(vm.id)
        made: list[str] = []

        async def new_top() -> None:
            made.append(await layers.create_above(self._settings.qemu_img_binary, vm_dir, layer))

        # The new top is made while QEMU quits; if it cannot be, QEMU still ends.
        await run_all(partial(self._end_qemu, vm.id, "restoring a snapshot"), new_top)
        layers.point_top(vm_dir, made[0])
        snapfiles.copy_platform(vm_dir, tpm.state_dir_of(vm_dir), folder, to_vm=True)
        layers.collect(vm_dir, self._keep_layers(vm.id))
        Resume.of(vm_dir).discard()
        if not snapshot.memory:
            self._step(vm.id, "restored", snapshot=name)
            return self._mgr._set(vm.id, S.STOPPED, f"restored from snapshot {name}")
        self._stage_resume(vm_dir, folder, snapshot.vm_state, vm.network_info)
        self._mgr._store.update_vm(vm.id, generation_id=str(uuidlib.uuid4()))
        self._step(vm.id, "restored", snapshot=name, standby=False)
        restoring = await self._mgr._start_locked(vm.id, resuming=True)
        self._keep_ready(vm.id, snapshot)
        return restoring

    def _keep_ready(self, vm_id: str, snapshot: Snapshot) -> None:
        """After a snapshot, or a restore of it: a standby of it, if it wants one."""
        if snapshot.memory and snapshot.standby:
            self._mgr.standbys.prepare_soon(vm_id, snapshot.name)

    async def _end_qemu(self, vm_id: str, why: str) -> None:
        """Quit the VM's QEMU (if any) without the exit changing its state, and wait until
        its supervisor has finished with it."""
        machine = self._mgr._machines.get(vm_id)
        if machine is None:
            return
        machine.report.keep_state = True
        machine.report.stop_requested = why
        with trio.CancelScope(shield=True):  # never left half-way: QEMU ends or is killed
            await machine.terminate(self._settings.kill_grace_s)
            await machine.finished.wait()

    @staticmethod
    def _stage_resume(vm_dir: Any, folder: SnapshotDir, vm_state: VmState, info: Any) -> None:
        staged = Resume.of(vm_dir, partial=True)
        staged.make()
        folder.link_memory(staged)
        staged.write_state(vm_state, info.mac if info is not None else None)
        staged.publish()

    # -- resuming saved RAM (called by the manager's launch) ---------------------

    def pending_resume(self, vm: Vm) -> Resume | None:
        """The RAM a VM resumes at its next start, if it has one."""
        resume = Resume.of(self._vm_dir(vm.id))
        return resume if resume.exists else None

    async def resume_into(self, machine: Machine, vm: Vm, resume: Resume) -> VmState:
        """Load the saved RAM into a QEMU started ``-incoming``; run it if it was running.

        Returns the state the guest is in. The image is dropped once the guest is back.
        """
        vm_state, mac = resume.state()
        info = vm.network_info
        with resume.open_memory() as source:
            await snapshots.load_memory(
                machine,
                source,
                timeout_s=self._settings.snapshot_timeout_s,
                announce=snapshots.announces(info),
            )
        if vm_state is S.RUNNING:
            await qmp_commands.cont(machine)
        resume.discard()
        self._step(vm.id, "resumed", state=vm_state.value)
        if mac is not None and info is not None and info.mac not in (None, mac):
            machine.start_soon("giving a fork its identity", lambda: self._give_identity(vm, mac))
        return vm_state

    async def _give_identity(self, vm: Vm, old_mac: str) -> None:
        """A child resumed with the parent's MAC (and address) in the guest's memory:
        set its own through the guest agent, once it answers."""
        info = vm.network_info
        assert info is not None and info.mac is not None
        # Flushing the address drops the routes through it: the default one is put back.
        # The shell reads with its builtin and execs its last command: every process
        # costs a restored guest a fork and an exec that TCG translates anew.
        script = (
            'for i in /sys/class/net/*; do read -r a < "$i/address" && [ "$a" = "$1" ] '
            '|| continue; d="${i##*/}"; [ -n "$3" ] || exec ip link set dev "$d" address "$2"; '
            'ip link set dev "$d" address "$2" && ip addr flush dev "$d" '
            '&& ip addr add "$3" dev "$d" || exit 1; '
            '[ -z "$4" ] || exec ip route replace default via "$4" dev "$d"; done'
        )
        address = info.ip if info.type == "bridge" else None  # NAT children keep passt's
        gateway = info.gateway if address is not None else None
        command = ["sh", "-c", script, "sh", old_mac, info.mac, address or "", gateway or ""]
        try:
            result = await self._mgr.guest.exec(
                vm.id, ExecRequest(command=command), wait_agent_s=_IDENTITY_AGENT_WAIT_S
            )
        except HMError as err:
            self._step(vm.id, "identity_failed", reason=err.message, mac=old_mac)
            return
        if result.exit_code != 0:
            stderr = (result.stderr or "").strip()[-200:]
            reason = f"the guest's ip command failed: {stderr}"
            self._step(vm.id, "identity_failed", reason=reason, mac=old_mac)
            return
        self._step(vm.id, "identity_set", mac=info.mac, ip=address)

    def settle_exit(
        self, vm_id: str, current: VmState, state: VmState, reason: str | None
    ) -> tuple[VmState, str | None]:
        """The state of a VM whose QEMU ended unexpectedly while a snapshot operation ran:
        a VM with saved RAM to resume is ``hibernated`` (restorable), not lost."""
        if current in (S.RESTORING, S.SNAPSHOTTING) and Resume.of(self._vm_dir(vm_id)).exists:
            again = "start tries again, stop discards the saved RAM"
            return S.HIBERNATED, f"resuming failed ({reason}); {again}"
        return state, reason

    # -- hibernate ---------------------------------------------------------------

    async def hibernate(self, vm_id: str) -> Vm:
        """Save RAM and device state, end QEMU: the VM is ``hibernated`` until ``start``.

        Raises:
            InvalidState, SnapshotRefused, QuotaExceeded, ClusterUnavailable,
            HypervisorError.
        """

        async def steps(vm: Vm, begin: Callable[[], None]) -> Vm:
            check(vm.state, Action.HIBERNATE)
            machine = self._mgr._machine(vm.id)
            snapshots.refuse_memory(vm, await snapshots.migration_blockers(machine))
            await self._check_storage(vm)
            begin()
            return await self._hibernate(vm, machine)

        return await (await self._job(vm_id, steps)).result()

    async def _hibernate(self, vm: Vm, machine: Machine) -> Vm:
        await self._mgr.standbys.drop(vm.id, "the VM hibernates")  # its memory goes too
        before = vm.state
        vm_dir = self._vm_dir(vm.id)
        staged = Resume.of(vm_dir, partial=True)
        staged.make()
        info = vm.network_info
        # Written first: a server restarted mid-way reads the state to go back to.
        staged.write_state(before, info.mac if info is not None else None)
        self._mgr._set(vm.id, S.SNAPSHOTTING, None)
        self._step(vm.id, "hibernate_started")
        try:
            if before is S.RUNNING:
                await qmp_commands.stop(machine)
            await self._save_memory(machine, staged)
        except BaseException as err:
            with trio.CancelScope(shield=True):
                staged.discard()
                await self._back_to(vm.id, before, machine, before is S.RUNNING)
                reason = err.message if isinstance(err, HMError) else repr(err)
                self._step(vm.id, "failed", reason=reason)
            raise
        size = staged.memory_size()
        staged.publish()
        self._step(vm.id, "memory_saved", bytes=size)
        await self._end_qemu(vm.id, "hibernated")
        self._step(vm.id, "hibernated")
        return self._mgr._set(vm.id, S.HIBERNATED, "RAM saved to disk; start resumes it")

    def discard(self, vm_id: str) -> Vm:
        """Stop a hibernated VM for good: its saved RAM is dropped (the next start boots)."""
        Resume.of(self._vm_dir(vm_id)).discard()
        self._step(vm_id, "discarded")
        return self._mgr._set(vm_id, S.STOPPED, "the saved RAM was discarded")

    # -- fork --------------------------------------------------------------------

    async def fork(self, vm_id: str, request: ForkRequest) -> list[Vm]:
        """New VMs resuming from the parent's memory snapshot (an instant one when none
        is named), each on its own disk layer with its own id, UUID, MAC and generation id.

        Raises:
            SnapshotNotFound, InvalidState, SnapshotRefused, NameTaken, AddressInUse,
            PortInUse, QuotaExceeded, ClusterUnavailable, HypervisorError.
        """
        names = (
            [request.name]
            if request.count == 1
            else [f"{request.name}-{n}" for n in range(1, request.count + 1)]
        )

        async def steps(parent: Vm, begin: Callable[[], None]) -> list[Vm]:
            self._check_children(parent, request)
            await self._check_storage(parent)
            if request.snapshot is not None:
                begin()
                folder = self._dir(parent.id, request.snapshot)
                return await self._clone(parent, folder, names, ips=request.ips, start=True)
            check(parent.state, Action.SNAPSHOT)
            machine = self._mgr._machine(parent.id)
            snapshots.refuse_memory(parent, await snapshots.migration_blockers(machine))
            begin()
            instant = f"fork-{uuidlib.uuid4().hex[:8]}"
            folder = await self._capture(parent, instant, machine, memory=True)
            try:
                return await self._clone(parent, folder, names, ips=request.ips, start=True)
            finally:
                folder.remove()  # the children hold their own links to what they need

        children = await (await self._job(vm_id, steps)).result()
        if request.wait:
            timeout = request.timeout_s or self._settings.snapshot_timeout_s
            children = [await self._mgr.wait_started(c.id, timeout) for c in children]
        return children

    @staticmethod
    def _check_children(parent: Vm, request: ForkRequest) -> None:
        if parent.network.ip is not None and (
            request.ips is None or len(request.ips) != request.count
        ):
            raise AddressInUse(
                f"VM {parent.id} has the static address {parent.network.ip}; give each child "
                "its own in ips",
                field="ips",
            )
        if request.ips is not None and len(request.ips) != request.count:
            raise AddressInUse("give one address in ips per child", field="ips")
        hosts = [ipaddress.IPv4Interface(ip).ip for ip in request.ips or []]
        if len(set(hosts)) != len(hosts):
            raise AddressInUse("each child needs an address of its own in ips", field="ips")
        if request.ips is not None and parent.network.type != "bridge":
            raise ValidationFailed("static addresses need network type 'bridge'", field="ips")
        if parent.network.ports and request.ports == "refuse":
            raise PortInUse(
                f"VM {parent.id} forwards host ports; a child cannot have them (ports: remap "
                "gives each child free ones)",
                field="ports",
                ports=[p.host for p in parent.network.ports],
            )

    async def _clone(
        self,
        parent: Vm,
        folder: SnapshotDir,
        names: list[str],
        *,
        ips: list[str] | None,
        start: bool,
    ) -> list[Vm]:
        """Children of ``parent`` from the snapshot in ``folder``; started with ``start``
        (one with saved RAM resumes it, one without boots)."""
        snapshot, layer = folder.meta()
        ref = SnapshotRef(vm_id=parent.id, snapshot=snapshot.name)
        # Every child is planned (MAC, address, ports) before any is stored: a refusal
        # of the last leaves no half-made sibling behind.
        planned: list[Vm] = []
        for index, name in enumerate(names):
            planned.append(
                self._plan_child(parent, name, ref, ips[index] if ips else None, planned)
            )
        children = []
        for child in planned:
            self._mgr._store.insert_vm(child)
            self._mgr.events.vm_created(child)
            info = child.network_info
            self._step(
                parent.id,
                "forking",
                child=child.id,
                snapshot=snapshot.name,
                mac=info.mac if info is not None else None,
                ip=info.ip if info is not None else None,
                forwards=[f.model_dump() for f in info.forwards] if info is not None else [],
            )
            children.append(await self._populate(parent, child, folder, layer, snapshot))
        if start:
            started = []
            for child in children:
                async with self._mgr._lock(child.id):
                    started.append(await self._mgr._start_locked(child.id))
            children = started
        self._step(parent.id, "forked", children=[c.id for c in children], snapshot=snapshot.name)
        return children

    def _plan_child(
        self, parent: Vm, name: str, ref: SnapshotRef, ip: str | None, siblings: list[Vm]
    ) -> Vm:
        """The child's record (state ``creating``, not stored yet), with a network plan of
        its own: no MAC, address or host port of a VM or of a sibling planned before it.

        Raises: AddressInUse, PortInUse, ValidationFailed.
        """
        vm_uuid = str(uuidlib.uuid4())
        now = utcnow()
        spec = parent.model_dump(include=set(VmSpec.model_fields))
        others = [*self._mgr._store.all_vms(), *siblings]
        ports = self._remap_ports(parent, others)
        spec["network"] = NetworkSpec.model_validate(
            {**spec["network"], "mac": None, "ip": ip, "ports": ports}
        ).model_dump()
        spec["name"] = name
        child = Vm.model_validate(
            {
                **spec,
                "id": f"vm-{vm_uuid.replace('-', '')[:12]}",
                "uuid": vm_uuid,
                "state": S.CREATING,
                "created_at": now,
                "updated_at": now,
                "tenant": parent.tenant,
                "generation_id": str(uuidlib.uuid4()),
                "from_snapshot": ref.model_dump(),
                "node": self._settings.node_name,
                "security_notes": parent.security_notes,
            }
        )
        return self._mgr._resources.admit(child, others)

    def _remap_ports(self, parent: Vm, others: list[Vm]) -> list[dict[str, Any]]:
        """Each forwarded port of the parent on a free host port of the allowed range."""
        taken = {
            (f.protocol, f.host_port)
            for vm in others
            for f in (vm.network_info.forwards if vm.network_info else [])
        }
        remapped = []
        low, high = self._settings.forward_port_min, self._settings.forward_port_max
        address = self._settings.forward_address
        for port in parent.network.ports:
            candidates = [*range(port.host + 1, high + 1), *range(low, port.host)]
            free = next(
                (
                    p
                    for p in candidates
                    if (port.protocol, p) not in taken
                    and hostnet.port_free(address, p, port.protocol)
                ),
                None,
            )
            if free is None:
                raise PortInUse("no free host port is left for a child", field="ports")
            taken.add((port.protocol, free))
            remapped.append(
                PortForward(host=free, guest=port.guest, protocol=port.protocol).model_dump()
            )
        return remapped

    async def _populate(
        self, parent: Vm, child: Vm, folder: SnapshotDir, layer: str, snapshot: Snapshot
    ) -> Vm:
        parent_dir, child_dir = self._vm_dir(parent.id), self._vm_dir(child.id)
        try:
            layers.link_chain(parent_dir, layer, child_dir)
            top = await layers.create_above(self._settings.qemu_img_binary, child_dir, layer)
            layers.point_top(child_dir, top)
            snapfiles.copy_platform(child_dir, tpm.state_dir_of(child_dir), folder, to_vm=True)
            if snapshot.memory:
                self._stage_resume(child_dir, folder, snapshot.vm_state, parent.network_info)
        except (HMError, OSError) as err:
            message = err.message if isinstance(err, HMError) else str(err)
            return self._mgr._set(child.id, S.ERROR, f"fork failed: {message}")
        state = S.HIBERNATED if snapshot.memory else S.STOPPED
        reason = f"forked from {parent.id} snapshot {snapshot.name}"
        return self._mgr._set(child.id, state, reason)

    async def create_from(
        self, ref: SnapshotRef, name: str, *, start: bool, labels: dict[str, str]
    ) -> Vm:
        """A VM from a snapshot (a template): a fork of one, started only if asked.

        Raises: VmNotFound, SnapshotNotFound, NameTaken, AddressInUse, HypervisorError.
        """
        request = ForkRequest(name=name, snapshot=ref.snapshot)

        async def steps(parent: Vm, begin: Callable[[], None]) -> list[Vm]:
            self._check_children(parent, request)
            await self._check_storage(parent)
            folder = self._dir(parent.id, ref.snapshot)
            begin()
            children = await self._clone(parent, folder, [name], ips=None, start=start)
            if labels:
                children = [self._mgr._store.update_vm(c.id, labels=labels) for c in children]
            return children

        return (await (await self._job(ref.vm_id, steps)).result())[0]

    # -- after a server restart --------------------------------------------------

    def recover_prior_state(self, vm: Vm) -> VmState | None:
        """For a VM caught snapshotting or restoring: the state it was in before (from
        the partial snapshot), after removing what was half-written."""
        vm_dir = self._vm_dir(vm.id)
        prior = None
        for folder in snapfiles.partial_snapshots(vm_dir):
            with contextlib.suppress(OSError, HypervisorError):
                prior = folder.meta()[0].vm_state
        with contextlib.suppress(OSError, HypervisorError):
            prior = Resume.of(vm_dir, partial=True).state()[0]  # a hibernation's
        snapfiles.clear_partial(vm_dir)
        return prior

    def hibernation_written(self, vm: Vm) -> bool:
        """A VM caught ``snapshotting`` whose hibernation image is complete: only ending
        its QEMU was left to do."""
        return vm.state is S.SNAPSHOTTING and Resume.of(self._vm_dir(vm.id)).exists

    def gone_state(self, vm: Vm) -> tuple[VmState, str]:
        """The state of a VM whose QEMU was not running at start-up."""
        if Resume.of(self._vm_dir(vm.id)).exists:
            return S.HIBERNATED, "the server restarted; its RAM is saved, start resumes it"
        return S.STOPPED, "QEMU was not running when the server started"
