"""All VMs: the operations the API, agent tools and scripts call, and their lifecycle.

Ownership: ``Manager.run`` is started with ``nursery.start`` by the server; it
re-adopts every QEMU still running before it reports ready (:mod:`.readopt`), and
owns one supervisor task per live VM plus the provisioning tasks of VMs being
created (:mod:`.provision`). Snapshots are delegated to :mod:`.snapshot_service`,
a live VM's figures read by :mod:`.metrics`. Every state change is written to the
store first and then announced to waiters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import socket
import subprocess
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import psutil
import trio

from ..concurrently import run_all
from ..config import ConfigError, Settings
from ..errors import (
    HMError,
    HypervisorError,
    ImageNotFound,
    InvalidState,
    NodeNotFound,
    Unsupported,
    VmNotFound,
    WaitTimeout,
)
from ..events import EventLog
from ..models import (
    CreateFromSnapshotRequest,
    CreateVmRequest,
    EventType,
    ForkRequest,
    GuestAgentInfo,
    HostCapabilities,
    HostDevices,
    MigrateRequest,
    Migration,
    Snapshot,
    SnapshotRequest,
    Vm,
    VmMetrics,
    VmSpec,
    VmState,
)
from ..security.admission import HostBudget, admit
from ..security.caller import current_caller
from ..states import LIVE_STATES, START_FAILED, STARTED, Action, check, transition
from ..store import Store, VmQuery, fingerprint, utcnow
from ..telemetry import Telemetry
from .devices import hostnet
from .devices.resources import Held, HostResources
from .guest.console import ConsoleService, rotate_at_start
from .guest.service import GuestService
from .metrics import require_live, vm_metrics
from .migration_incoming import IncomingMigrations
from .migration_service import MigrationService
from .platform import bios_reset, capabilities, vmplatform
from .platform.host import HostFacts, check_supported
from .ports import (
    CatalogueLike,
    GuardLike,
    ImageLike,
    LiveCountLike,
    OwnersLike,
    PeersLike,
    StorageCountLike,
)
from .provision import Provisioning
from .qemu import qmp_commands
from .qemu.argv import BootSource, Platform
from .qemu.faults import contained
from .qemu.machine import ArgvBuilder, Companion, Machine, spawn_qemu
from .qemu.qmp import QmpBridge
from .readopt import Readoption
from .snapshot_service import SnapshotService
from .standby import Standbys
from .storage.snapfiles import Resume
from .vm_argv import build_argv
from .vmfiles.confine import QemuIdentity, make_reachable
from .vmfiles.layout import VmPaths

__all__ = ["Manager"]

log = logging.getLogger(__name__)


_Op = Callable[..., Awaitable[Any]]


def _owned(method: _Op) -> _Op:
    """Check the caller may see the VM (the first argument) before the method runs.

    The dispatcher has found the VM in the caller's scope already; this keeps the
    manager safe on its own too (tests, the CLI).
    """

    @functools.wraps(method)
    async def run(self: Manager, vm_id: str, *args: Any, **kwargs: Any) -> Any:
        self.get(vm_id)
        return await method(self, vm_id, *args, **kwargs)

    return run


def _host_budget(settings: Settings) -> HostBudget:
    cpus = os.cpu_count() or 1
    memory_mb = psutil.virtual_memory().total // (1024 * 1024)
    return HostBudget(
        memory_mb=int(memory_mb * settings.memory_overcommit_ratio),
        vcpus=int(cpus * settings.cpu_overcommit_ratio),
        max_vcpus_per_vm=settings.max_vcpus_per_vm or cpus,
    )


_ALL = VmQuery(limit=500)
_VM_TASKS = "the VM's supervision"


class _Started:
    """A task status that remembers whether the task reported ready."""

    def __init__(self, inner: trio.TaskStatus[None]) -> None:
        self._inner = inner
        self.reported = False

    def started(self, value: None = None) -> None:
        self.reported = True
        self._inner.started()


# States the server itself is driving; QEMU's events then don't override them.
_SERVER_DRIVEN = frozenset(
    {
        VmState.STARTING,
        VmState.STOPPING,
        VmState.DELETING,
        VmState.SNAPSHOTTING,
        VmState.RESTORING,
    }
)


@dataclass(frozen=True)
class _Created:
    vm: Vm
    replayed: bool


def _boot_source(image: ImageLike) -> BootSource:
    return BootSource(kernel=image.kernel, initrd=image.initrd, append=image.append)


class Manager:
    """Every VM operation, on real QEMU processes."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        catalogue: CatalogueLike,
        host: HostFacts,
        bridge: QmpBridge,
        guard: GuardLike | None = None,
        qemu_identity: QemuIdentity | None = None,
    ) -> None:
        self._settings = settings
        self._guard = guard
        self.qemu_identity = qemu_identity  # None: QEMU runs as the server's user
        self._budget = _host_budget(settings)
        self._store = store
        self._catalogue = catalogue
        self.host = host
        self._bridge = bridge
        self._machines: dict[str, Machine] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.events = EventLog(store, retain=settings.events_retained)
        # Both look VMs up in the caller's scope, as every face-reachable path does.
        self.guest = GuestService(settings, self.events, self.get)
        self.console = ConsoleService(settings, self.get, self._paths)
        self.telemetry = Telemetry()
        self.events.add_listener(self.telemetry.on_event)
        self._resources = HostResources(settings, store.all_vms, qemu_identity=qemu_identity)
        self.snapshots = SnapshotService(self)
        self._readoption = Readoption(self)
        self._provisioning = Provisioning(self)
        self.owners: OwnersLike | None = None  # set when the node joins a cluster
        self.live_count: LiveCountLike | None = None  # likewise: quotas count every node
        self.peers: PeersLike | None = None  # likewise, with a cluster secret: migrations
        self.storage_count: StorageCountLike | None = None
        self.migrations = MigrationService(self)
        self.incoming = IncomingMigrations(self)
        self.standbys = Standbys(self)

    # -- life of the manager ---------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Re-adopt running VMs, report ready, then own their supervisors until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.host = await capabilities.refresh(self.host, self._settings)
            await self._resources.prepare()
            for vm in list(self._store.all_vms()):
                await self._readoption.recover(vm)
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:  # standbys are a cache: never left holding memory behind the server
                with trio.CancelScope(shield=True):
                    await self.standbys.drop_all("the server stops")

    def _spawn(self, vm_id: str, fn: Any, *args: Any) -> None:
        """Start one VM's task in the manager's nursery, contained (see _vm_task)."""
        if self._nursery is None:
            raise HypervisorError("the VM manager is not running")
        self._nursery.start_soon(
            contained, vm_id, _VM_TASKS, partial(fn, *args), self._failed(vm_id)
        )

    async def start_task(self, fn: Any) -> None:
        """``nursery.start`` a task that contains its own failures once it is ready (a
        snapshot operation): a failure before that is the caller's error."""
        if self._nursery is None:
            raise HypervisorError("the VM manager is not running")
        await self._nursery.start(fn)

    async def _nursery_start(self, vm_id: str, fn: Any, *args: Any) -> None:
        """``nursery.start`` one VM's task, contained (see _vm_task)."""
        if self._nursery is None:
            raise HypervisorError("the VM manager is not running")
        await self._nursery.start(self._vm_task, vm_id, fn, *args)

    async def _vm_task(
        self,
        vm_id: str,
        fn: Any,
        *args: Any,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``fn`` (which reports ready through ``task_status``) contained: its failure
        makes this VM ``error``; it never reaches the manager's nursery. A task that
        fails before it reported ready is reported for it, so the caller carries on."""
        status = _Started(task_status)
        await contained(
            vm_id, _VM_TASKS, partial(fn, *args, task_status=status), self._failed(vm_id)
        )
        if not status.reported:
            task_status.started()

    def _failed(self, vm_id: str) -> Callable[[str], Awaitable[None]]:
        async def handle(reason: str) -> None:
            """The last line of defence: a VM task failed outside its machine's guards.
            Its QEMU (if any) is killed and the VM is ``error``; then what it held on
            the host is given back (a failure there is logged by ``contained``)."""
            self.events.vm_fault(vm_id, _VM_TASKS, reason)
            machine = self._machines.pop(vm_id, None)
            if machine is not None and not machine.exited.is_set():
                machine.kill()
            try:
                if self._store.get_vm(vm_id).state is VmState.DELETING:
                    return
            except VmNotFound:
                return
            self._set(vm_id, VmState.ERROR, reason, pid=None)
            vmplatform.after_exit(self._paths(vm_id))
            await self._release(vm_id)

        return handle

    # -- state bookkeeping -----------------------------------------------------

    def _paths(self, vm_id: str) -> VmPaths:
        try:
            return self.paths_of(self._store.get_vm(vm_id))
        except VmNotFound:
            return VmPaths.for_vm(self._settings.vms_dir, self._settings.runtime_dir, vm_id)

    def paths_of(self, vm: Vm) -> VmPaths:
        """Where ``vm``'s files are on this node: on the shared storage for a VM that
        restarts on node failure (a node without it refuses to start one: _shared)."""
        shared = self._settings.shared_vms_dir
        wants_shared = vm.restart_policy == "on_node_failure" and shared is not None
        vms_dir = shared if wants_shared and shared is not None else self._settings.vms_dir
        return VmPaths.for_vm(vms_dir, self._settings.runtime_dir, vm.id)

    @property
    def shared_storage(self) -> bool:
        """Whether this node can hold VMs that restart on node failure."""
        return self._settings.shared_storage_dir is not None and bool(self._settings.etcd_urls)

    def _shared(self, spec: VmSpec) -> None:
        """Refuse a VM that restarts on node failure where its files could not be shared.

        Raises:
            Unsupported: this node has no shared storage or is not in a cluster.
        """
        if spec.restart_policy == "on_node_failure" and not self.shared_storage:
            raise Unsupported(
                "restart_policy 'on_node_failure' needs a cluster node with "
                "shared_storage_dir set (the VM's disk must be on storage every node sees); "
                f"node {self._settings.node_name} has none",
                field="restart_policy",
                node=self._settings.node_name,
            )

    async def host_capabilities(self, *, refresh: bool = False) -> HostCapabilities:
        """The capability map probed at start-up, or probed again now (new firmware,
        modules, swtpm...) with ``refresh``.

        Raises:
            HypervisorError: the host has not been probed.
        """
        if refresh:
            self.host = await capabilities.refresh(self.host, self._settings)
        if self.host.capabilities is None:
            raise HypervisorError("the host's capabilities have not been probed yet")
        return self.host.capabilities

    async def _reach_folders(self) -> None:
        """Check again, before swtpm or QEMU runs as the QEMU user, that it can reach its
        folders: their modes may have changed since start-up (a ``chmod 700`` resets an
        ACL's mask), and the entry is then restored.

        Raises:
            HypervisorError: the folders cannot be opened to that user.
        """
        if self.qemu_identity is None:
            return
        try:
            await trio.to_thread.run_sync(
                make_reachable, self.qemu_identity, self._settings.qemu_folders
            )
        except ConfigError as err:
            raise HypervisorError(str(err)) from err

    def _lock(self, vm_id: str) -> trio.Lock:
        return self._locks.setdefault(vm_id, trio.Lock())

    def _set(self, vm_id: str, state: VmState, reason: str | None, **extra: Any) -> Vm:
        before = self._store.get_vm(vm_id)  # one read serves the event and the write
        vm = self._store.apply(before, state=state, state_reason=reason, **extra)
        self.events.state_changed(vm, before.state)
        self._announce()
        return self._live(vm)

    def _live(self, vm: Vm) -> Vm:
        """The stored VM plus what is only known live (its guest agent)."""
        return vm.model_copy(update={"guest_agent": self.guest.info(vm.id)})

    async def wait_changed(self) -> None:
        """Return once any VM's state changes next."""
        await self._changed.wait()

    def _announce(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _machine(self, vm_id: str) -> Machine:
        machine = self._machines.get(vm_id)
        if machine is None:
            vm = self._store.get_vm(vm_id)
            raise InvalidState(f"VM is {vm.state.value}, no QEMU process", current=vm.state.value)
        return machine

    # -- the caller's view -----------------------------------------------------

    @staticmethod
    def _scoped(query: VmQuery) -> VmQuery:
        caller = current_caller()
        return query if caller.admin else dataclasses.replace(query, tenant=caller.tenant)

    # -- queries ---------------------------------------------------------------

    def get(self, vm_id: str) -> Vm:
        """The VM, if the current caller may see it: every VM operation starts here.

        Raises:
            VmNotFound: no such VM, or another tenant's (the two look the same).
        """
        vm = self._store.get_vm(vm_id)
        if not current_caller().sees(vm.tenant):
            raise VmNotFound(f"no VM with id {vm_id!r}", id=vm_id)
        return self._live(vm)

    def live_vms(self) -> list[Vm]:
        """Every VM of this node holding resources now, all tenants (no caller check:
        for the cluster's count of live VMs)."""
        return [vm for vm in self._store.all_vms() if vm.state in LIVE_STATES]

    def owner_of(self, vm_id: str) -> str | None:
        """The tenant a VM belongs to, or None when there is no such VM (no caller check:
        for filtering what a caller may see)."""
        try:
            return self._store.get_vm(vm_id).tenant
        except VmNotFound:
            return None

    def list(self, query: VmQuery = _ALL) -> tuple[list[Vm], str | None]:
        """A page of the caller's VMs and the cursor of the next one."""
        vms, cursor = self._store.list_vms(self._scoped(query))
        return [self._live(vm) for vm in vms], cursor

    def list_json(self, query: VmQuery) -> str:
        """The same page as ``{"vms": [...], "next_cursor": ...}`` JSON, built from the
        stored documents without re-parsing them (the API's listing path); only VMs
        with a live QEMU are re-rendered, to carry what is known live."""
        rows, cursor = self._store.list_vm_docs(self._scoped(query))
        docs = [
            self.get(vm_id).model_dump_json() if vm_id in self._machines else doc
            for vm_id, doc in rows
        ]
        return f'{{"vms":[{",".join(docs)}],"next_cursor":{json.dumps(cursor)}}}'

    async def wait_for(
        self,
        vm_id: str,
        states: Collection[VmState],
        timeout_s: float,
        *,
        failed_in: Collection[VmState] = (),
    ) -> Vm:
        """Return the VM once it is in one of ``states``. ``failed_in``: states that say
        the awaited change failed (a start that fell back to ``hibernated``), which end
        the wait at once, as ``error`` does.

        Raises:
            WaitTimeout: not reached within ``timeout_s``.
            InvalidState: the VM went to ``error`` (unless awaited) or a ``failed_in`` state.
            VmNotFound: the VM does not exist (or was deleted meanwhile).
        """
        self.get(vm_id)
        timeout_s = min(timeout_s, self._settings.wait_timeout_max_s)
        deadline = trio.current_time() + timeout_s
        while True:
            changed = self._changed
            vm = self._store.get_vm(vm_id)
            if vm.state in states:
                return vm
            if vm.state is VmState.ERROR or vm.state in failed_in:
                raise InvalidState(
                    f"VM {vm_id} went to {vm.state.value}: {vm.state_reason}",
                    vm_id=vm_id,  # a fork's caller learns which child
                    current=vm.state.value,
                    reason=vm.state_reason,
                )
            with trio.move_on_at(deadline):
                await changed.wait()
            if trio.current_time() >= deadline:
                raise WaitTimeout(
                    f"VM did not reach {'/'.join(sorted(states))} within {timeout_s:g} s",
                    current=vm.state.value,
                    awaited=sorted(states),
                )

    async def wait_started(self, vm_id: str, timeout_s: float) -> Vm:
        """The VM once a start (a boot, a resume of saved RAM) has it ``running`` or
        ``paused`` (a guest saved paused comes back paused).

        Raises:
            InvalidState: the start failed (the VM is in ``error``, or fell back to
                ``stopped`` or ``hibernated``). WaitTimeout, VmNotFound.
        """
        return await self.wait_for(vm_id, STARTED, timeout_s, failed_in=START_FAILED)

    # -- create / delete -------------------------------------------------------

    async def create(
        self, request: CreateVmRequest, idempotency_key: str | None = None
    ) -> _Created:
        """Record the VM (state ``creating``) and provision its disk in the background.

        Raises:
            ImageNotFound, Unsupported, NameTaken, IdempotencyConflict.
        """
        if request.node not in (None, self._settings.node_name):
            raise NodeNotFound(f"node {request.node!r} is not this one", node=request.node)
        body = request.model_dump(mode="json")
        tenant = current_caller().tenant
        if idempotency_key is not None:
            idempotency_key = f"{tenant}/{idempotency_key}"  # a tenant replays only its own
            replay = self._replay(idempotency_key, fingerprint(body))
            if replay is not None:
                return _Created(replay, replayed=True)
        image = self._catalogue.get(request.image)
        request = vmplatform.resolve_firmware(request, image.firmware)
        check_supported(request, self.host, also=self._resources.unsupported(request))
        now = utcnow()
        vm_uuid = str(uuidlib.uuid4())
        spec = VmSpec.model_validate(request.model_dump(exclude={"start", "wait", "node"}))
        self._shared(spec)
        vm = Vm(
            **spec.model_dump(),
            id=f"vm-{vm_uuid.replace('-', '')[:12]}",
            uuid=vm_uuid,
            state=VmState.CREATING,
            security_notes=vmplatform.security_notes(spec, direct_kernel=image.kernel is not None),
            created_at=now,
            updated_at=now,
            tenant=tenant,
            node=self._settings.node_name,
        )
        vm = self._resources.admit(vm, self._store.all_vms())
        if self.owners is not None:
            await self.owners.hold(vm)
        try:
            self._store.insert_vm(vm)
        except HMError:
            if self.owners is not None:
                await self.owners.release(vm.id)
            raise
        self.events.vm_created(vm)
        if idempotency_key is not None:
            self._store.put_idempotency(idempotency_key, fingerprint(body), vm.id)
        self._announce()
        if not image.available:
            self._spawn(vm.id, self._provisioning.pull_then_provision, vm.id, request.start)
        else:
            await self._nursery_start(
                vm.id, self._provisioning.provision, vm.id, image, request.start
            )
        return _Created(vm, replayed=False)

    def _replay(self, key: str, body_fingerprint: str) -> Vm | None:
        from ..errors import IdempotencyConflict

        record = self._store.get_idempotency(key, max_age_s=self._settings.idempotency_ttl_s)
        if record is None:
            return None
        if record.fingerprint != body_fingerprint:
            raise IdempotencyConflict(
                "this Idempotency-Key was used with a different request body", key=key
            )
        try:
            return self.get(record.vm_id)
        except VmNotFound:
            return None

    @_owned
    async def delete(self, vm_id: str, *, force: bool = False) -> None:
        """Remove the VM, its disk and files. ``force`` kills a live QEMU first.

        Raises:
            VmNotFound, InvalidState (live VM without ``force``).
        """
        async with self._lock(vm_id):
            vm = self._store.get_vm(vm_id)
            deleting = transition(vm.state, Action.FORCE_DELETE if force else Action.DELETE)
            if self.owners is not None and vm.restart_policy == "on_node_failure":
                await self.owners.hold(vm)  # its files are shared: never another node's
            self._set(vm_id, deleting, None)
            await self.standbys.drop(vm_id, "the VM is deleted")
            machine = self._machines.get(vm_id)
            if machine is not None:
                machine.report.stop_requested = "deleted"
                await machine.terminate(0)
            await self._release(vm_id)
            if self.owners is not None:
                try:
                    await self.owners.release(vm_id)
                except HMError as err:  # a key naming us for a deleted VM is harmless
                    log.warning("%s: its ownership key stays: %s", vm_id, err.message)
        self._finish_delete(vm_id)
        await self.snapshots.count_storage(vm.tenant)  # its files are gone

    async def _release(self, vm_id: str) -> None:
        """Give back what the VM held on the host (tap, devices); idempotent."""
        try:
            vm = self._store.get_vm(vm_id)
        except VmNotFound:
            return
        await self._resources.release(vm, self._paths(vm_id))
        if vm.gpu_assignment is not None:
            self._store.update_vm(vm_id, gpu_assignment=None)

    async def moved_away(self, vm_id: str) -> bool:
        """For a VM another node owns: if this node's QEMU of it has sent its state away
        (paused ``postmigrate``: a migration's source whose server died after handing it
        over), quit that QEMU and drop the record, files too unless shared; True if so.
        Any other QEMU is left alone (it may be the only copy)."""
        machine = self._machines.get(vm_id)
        if machine is None:
            return False
        try:
            status = await qmp_commands.query_status(machine)
        except HypervisorError:
            return False
        if status.status != "postmigrate":
            return False
        vm = self._store.get_vm(vm_id)
        machine.report.handed_over = True
        await machine.terminate(self._settings.kill_grace_s)
        await machine.finished.wait()
        await self._resources.release(vm, self._paths(vm_id))
        self.forget_moved(vm_id, files=vm.restart_policy != "on_node_failure")
        return True

    def forget_moved(self, vm_id: str, *, files: bool) -> None:
        """Drop the record of a VM another node runs now (live-migrated there);
        ``files``: its folder too (not on shared storage)."""
        self._forget(vm_id, files=files)
        self.events.record(
            EventType.MIGRATION_STEP, vm_id, step="left", node=self._settings.node_name
        )

    def _finish_delete(self, vm_id: str, *, files: bool = True) -> None:
        """Forget the VM here; ``files``: remove its folder too."""
        self._forget(vm_id, files=files)
        self.events.vm_deleted(vm_id)

    def _forget(self, vm_id: str, *, files: bool) -> None:
        paths = self._paths(vm_id)
        vmplatform.after_exit(paths)
        if files:
            paths.remove()
        else:
            paths.clear_runtime()
        self._store.delete_vm(vm_id)
        self._locks.pop(vm_id, None)
        self.guest.forget(vm_id)
        self._announce()

    # -- lifecycle -------------------------------------------------------------

    @_owned
    async def start(self, vm_id: str) -> Vm:
        """Launch QEMU (paused), connect QMP and let the guest run.

        Returns once QEMU is launched (state ``starting``); the VM becomes
        ``running`` when QEMU confirms, or ``error`` with QEMU's complaint.

        Raises:
            VmNotFound, InvalidState, ImageNotFound, QuotaExceeded, InsufficientResources.
        """
        async with self._lock(vm_id):
            return await self._start_locked(vm_id)

    async def _start_locked(self, vm_id: str, *, resuming: bool = False) -> Vm:
        """Start the VM; one with saved RAM (hibernated, forked, ``resuming`` a restore)
        resumes it (state ``restoring``) instead of booting."""
        vm = self._store.get_vm(vm_id)
        if not resuming:
            check(vm.state, Action.START)
        self._shared(vm)
        resume = self.snapshots.pending_resume(vm)
        if resume is not None and not (resuming or vm.state is VmState.HIBERNATED):
            resume = None  # a stale image (the VM was discarded or booted since)
        check_supported(vm, self.host)
        image = self._catalogue.get(vm.image)
        if not image.available:
            raise ImageNotFound(f"image {vm.image!r} is not on disk", image=vm.image)
        if self.owners is not None:  # never a VM another node runs
            await self.owners.hold(vm)
        quota = self._guard.vm_quota() if self._guard is not None else 0
        if self.live_count is not None:  # the tenant's live VMs of every node count
            await self.live_count.admit(vm, quota)

        # Admission and the move to `starting` (which reserves the VM's share) run with
        # no checkpoint in between: under Trio no other start can interleave here (and
        # a VM created with start=true is never seen "stopped", see _provision).
        def admitted(budget: HostBudget) -> None:
            live = (other for other in self._store.all_vms() if other.state in LIVE_STATES)
            admit(vm, live, quota=quota, budget=budget)

        try:
            await self.standbys.make_room(admitted)
        except HMError:
            await self._not_live(vm)
            raise
        self._set(vm_id, VmState.STARTING if resume is None else VmState.RESTORING, None)
        try:
            held = await self._resources.acquire(vm, image.kernel is not None, self._paths(vm_id))
        except HMError as err:
            fallback = vm.state if resume is None else VmState.HIBERNATED
            self._set(vm_id, fallback, f"start refused: {err.message}")
            await self._not_live(vm)
            raise
        vm = self._store.update_vm(vm_id, **held.fields)
        await self._nursery_start(vm_id, self._launch, vm, _boot_source(image), held, resume)
        return vm

    async def _launch(
        self,
        vm: Vm,
        boot: BootSource,
        held: Held,
        resume: Resume | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        paths = self._paths(vm.id)
        settings = self._settings
        try:
            child = await self._spawn_qemu(vm, boot, held.nic, incoming=resume is not None)
        finally:
            if held.nic is not None:
                held.nic.close()  # QEMU holds its own copy of its network socket
                held.nic = None
        if child is None:
            held.close()
            task_status.started()
            return
        machine = Machine(vm_id=vm.id, pid=child.pid, paths=paths, child=child)
        self._machines[vm.id] = machine

        async def bring_up() -> None:
            connect = partial(machine.connect, self._bridge, settings.qmp_connect_timeout_s)
            info = vm.network_info
            if held.passt_end is None or info is None:
                await connect()
            else:  # the guest runs (cont) only once passt serves its network
                passt_end, held.passt_end = held.passt_end, None  # serve_nic closes it
                serve = partial(self._resources.serve_nic, info, paths, passt_end)
                await run_all(connect, serve)
            if resume is None:
                await qmp_commands.cont(machine)
                state = VmState.RUNNING
            else:
                state = await self.snapshots.resume_into(machine, vm, resume)
            self._on_machine_state(machine, state, None)

        try:
            await self._supervise_here(machine, boot=bring_up, task_status=task_status)
        finally:
            held.close()  # passt's end, if QEMU ended before bring_up handed it over

    async def _spawn_qemu(
        self, vm: Vm, boot: BootSource, nic: socket.socket | None, *, incoming: bool
    ) -> subprocess.Popen[bytes] | None:
        """QEMU started (paused); None when it could not be, the VM then in ``error``
        with the reason and its host resources given back."""
        paths = self._paths(vm.id)
        settings = self._settings
        try:
            await self._reach_folders()
            platform = await vmplatform.launch_platform(
                vm, boot, paths, self.host, settings, self.qemu_identity
            )
        except HMError as err:
            await self._release(vm.id)
            self._set(vm.id, VmState.ERROR, f"firmware/TPM could not be prepared: {err.message}")
            return None
        nic_fd = nic.fileno() if nic is not None else None
        argv = self.qemu_argv(vm, boot, paths, platform, nic_fd, incoming=incoming)
        try:
            rotate_at_start(paths.console_log)
            extra = () if nic_fd is None else (nic_fd,)
            bridge_tap = vm.network_info.tap if vm.network_info is not None else None
            tap_fd = hostnet.open_tap(bridge_tap) if bridge_tap is not None else None
            return spawn_qemu(argv, paths, self.qemu_identity, tap_fd, pass_fds=extra)
        except (HMError, ValueError) as err:
            await self._release(vm.id)
            vmplatform.after_exit(paths)
            self._set(vm.id, VmState.ERROR, f"QEMU could not be started: {err}")
            return None

    def boot_of(self, vm: Vm) -> BootSource:
        """How ``vm``'s image boots (a migration's destination boots the same way).

        Raises:
            ImageNotFound.
        """
        return _boot_source(self._catalogue.get(vm.image))

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
    ) -> ArgvBuilder:
        """The argv builder ``spawn_qemu`` calls with the QMP and tap descriptors
        (``top``: the disk's top layer instead of the one ``disk.qcow2`` names)."""

        def argv(qmp_fd: int, tap_fd: int | None) -> list[str]:
            return build_argv(
                vm,
                boot,
                paths,
                qemu_binary=self._settings.qemu_binary,
                accelerator=self.host.accelerator,
                qmp_fd=qmp_fd,
                nic_fd=nic_fd if nic_fd is not None else tap_fd,
                platform=platform,
                incoming=incoming,
                top=top,
            )

        return argv

    async def _supervise(self, machine: Machine) -> None:
        self._machines[machine.vm_id] = machine
        await self._nursery_start(machine.vm_id, self._supervise_here, machine)

    async def _supervise_here(
        self,
        machine: Machine,
        *,
        boot: Callable[[], Awaitable[None]] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async def on_state(state: VmState, reason: str | None) -> None:
            if machine.report.handed_over:  # the VM runs on in its migration's destination
                return
            if not machine.exited.is_set():
                self._on_machine_state(machine, state, reason)
                return
            await self._release(machine.vm_id)
            if not machine.report.keep_state:  # out of the count before it shows stopped
                await self._not_live_id(machine.vm_id)
            self._on_machine_state(machine, state, reason)
            if machine.report.keep_state:  # hibernated (out of the count), or restoring
                await self._not_live_id(machine.vm_id, unless_live=True)

        vm_id = machine.vm_id
        machine.on_qmp = self.telemetry.observe_qmp
        machine.on_fault = partial(self.events.vm_fault, vm_id)
        machine.on_reset = partial(self.guest.guest_reset, vm_id)  # a reboot from inside too
        machine.companions = [
            Companion(
                "the guest agent client",
                partial(self.guest.attend, vm_id, machine.paths.qga_socket),
                partial(self.guest.agent_faulted, vm_id),
            ),
            # The log is left as it is (QEMU keeps writing it); the fault event says why.
            Companion(
                "console log rotation",
                partial(self.console.keep_rotated, machine.paths.console_log),
                lambda _reason: None,
            ),
        ]
        try:
            await machine.supervise(on_state, boot=boot, task_status=task_status)
        finally:
            if machine.exited.is_set() and self._machines.get(machine.vm_id) is machine:
                del self._machines[machine.vm_id]

    async def _not_live(self, vm: Vm) -> None:
        """Take ``vm`` out of the cluster's live count (a failure is logged: the count
        then errs on the safe side until this node's lease ends)."""
        if self.live_count is None:
            return
        try:
            await self.live_count.leave(vm)
        except HMError as err:
            log.warning("%s: still counted live in the cluster: %s", vm.id, err.message)

    async def _not_live_id(self, vm_id: str, *, unless_live: bool = False) -> None:
        try:
            vm = self._store.get_vm(vm_id)
        except VmNotFound:
            return
        if not (unless_live and vm.state in LIVE_STATES):
            await self._not_live(vm)

    def _on_machine_state(self, machine: Machine, state: VmState, reason: str | None) -> None:
        try:
            current = self._store.get_vm(machine.vm_id).state
        except VmNotFound:
            return
        if machine.exited.is_set():
            report = machine.report
            self.events.qemu_exited(
                machine.vm_id,
                returncode=report.returncode,
                panicked=report.panic is not None or report.shutdown_reason == "guest-panic",
                shutdown_reason=report.shutdown_reason,
            )
            vmplatform.after_exit(machine.paths)
            if not machine.report.keep_state:  # a restore keeps it: it may be the next
                self.standbys.drop_soon(machine.vm_id, "its QEMU ended")
            if current is VmState.DELETING:
                return
            machine.paths.clear_runtime()
            if machine.report.keep_state:  # a restore or hibernation goes on from here
                self._store.update_vm(machine.vm_id, pid=None)
                return
            state, reason = self.snapshots.settle_exit(machine.vm_id, current, state, reason)
            self._set(machine.vm_id, state, reason, pid=None)
        elif current in (VmState.STARTING, VmState.RESTORING) and state in (
            VmState.RUNNING,
            VmState.PAUSED,
        ):
            self._set(
                machine.vm_id,
                state,
                None,
                pid=machine.pid,
                started_at=utcnow(),
                accelerator=self.host.accelerator,
            )
        # While the server starts, stops or deletes a VM, QEMU's own chatter is noise.
        elif current not in _SERVER_DRIVEN and state is not current:
            self._set(machine.vm_id, state, reason)

    @_owned
    async def stop(self, vm_id: str, *, force: bool = False, timeout_s: float | None = None) -> Vm:
        """Ask the guest to power off (ACPI), quitting QEMU if it has not within the
        timeout; ``force`` quits at once. A paused guest cannot see ACPI, so it is quit.

        Returns with the VM ``stopping``; it becomes ``stopped`` when QEMU exits.
        """
        async with self._lock(vm_id):
            vm = self._store.get_vm(vm_id)
            stopping = transition(vm.state, Action.STOP)
            if vm.state is VmState.HIBERNATED:
                return self.snapshots.discard(vm_id)
            machine = self._machine(vm_id)
            graceful = not force and vm.state is VmState.RUNNING
            machine.report.stop_requested = "quit on request"
            vm = self._set(vm_id, stopping, None)
            timeout = timeout_s or self._settings.stop_timeout_s

            async def stop_machine() -> None:
                if graceful:
                    machine.report.stop_requested = "the guest powered off (ACPI)"
                    with trio.move_on_after(timeout):
                        await _press_power_button(machine)
                    if machine.exited.is_set():
                        return
                    machine.report.stop_requested = (
                        f"the guest did not power off within {timeout:g} s; QEMU was quit"
                    )
                await machine.terminate(self._settings.kill_grace_s)

            machine.start_soon("stopping the VM", stop_machine)
        return vm

    @_owned
    async def pause(self, vm_id: str) -> Vm:
        return await self._simple(vm_id, Action.PAUSE, qmp_commands.stop)

    @_owned
    async def resume(self, vm_id: str) -> Vm:
        return await self._simple(vm_id, Action.RESUME, qmp_commands.cont)

    @_owned
    async def reboot(self, vm_id: str) -> Vm:
        """Hard reset of the guest (QMP ``system_reset``); the VM stays running.

        A BIOS guest is reset only once SeaBIOS is not halfway through shadowing
        itself (see :mod:`.platform.bios_reset`)."""
        bios = self._store.get_vm(vm_id).firmware == "bios"

        async def reset(machine: Machine) -> None:
            if bios:
                await bios_reset.wait_until_resettable(machine, _BIOS_COPY_TIMEOUT_S)
            await qmp_commands.system_reset(machine)
            self.guest.guest_reset(vm_id)

        return await self._simple(vm_id, Action.REBOOT, reset)

    async def _simple(
        self,
        vm_id: str,
        action: Action,
        command: Callable[[Machine], Awaitable[None]],
    ) -> Vm:
        async with self._lock(vm_id):
            vm = self._store.get_vm(vm_id)
            target = transition(vm.state, action)
            await command(self._machine(vm_id))
            return self._set(vm_id, target, None)

    async def qmp(self, vm_id: str, command: str, arguments: dict[str, Any] | None) -> object:
        """One QMP command on a live VM; callers decide which commands are allowed."""
        self.get(vm_id)
        return await self._machine(vm_id).execute(command, arguments)

    async def attestation(self, vm_id: str) -> dict[str, object]:
        """What QEMU reports about a running confidential VM (see vmplatform.attestation).

        Raises:
            VmNotFound, NotConfidential, InvalidState (not running).
        """
        vm = self.get(vm_id)
        return await vmplatform.attestation(vm, lambda: self._machine(vm_id))

    # -- snapshots, fork, hibernate (snapshot_service.py) ------------------------

    @_owned
    async def snapshot(self, vm_id: str, request: SnapshotRequest) -> Snapshot:
        """Raises: VmNotFound, InvalidState, NameTaken, SnapshotRefused, QuotaExceeded."""
        return await self.snapshots.snapshot(vm_id, request)

    def list_snapshots(self, vm_id: str) -> Sequence[Snapshot]:
        """Raises: VmNotFound."""
        self.get(vm_id)
        return self.snapshots.of_vm(vm_id)

    def get_snapshot(self, vm_id: str, name: str) -> Snapshot:
        """Raises: VmNotFound, SnapshotNotFound."""
        self.get(vm_id)
        return self.snapshots.get(vm_id, name)

    @_owned
    async def delete_snapshot(self, vm_id: str, name: str) -> None:
        """Raises: VmNotFound, SnapshotNotFound."""
        await self.snapshots.delete(vm_id, name)

    @_owned
    async def restore(self, vm_id: str, name: str, *, wait: bool = True) -> Vm:
        """Raises: VmNotFound, SnapshotNotFound, InvalidState, HypervisorError."""
        return await self.snapshots.restore(vm_id, name, wait=wait)

    @_owned
    async def fork(self, vm_id: str, request: ForkRequest) -> Sequence[Vm]:
        """Raises: VmNotFound, SnapshotNotFound, InvalidState, SnapshotRefused, NameTaken,
        AddressInUse, PortInUse, QuotaExceeded."""
        return await self.snapshots.fork(vm_id, request)

    @_owned
    async def hibernate(self, vm_id: str) -> Vm:
        """Raises: VmNotFound, InvalidState, SnapshotRefused, QuotaExceeded."""
        return await self.snapshots.hibernate(vm_id)

    async def create_from_snapshot(self, request: CreateFromSnapshotRequest) -> Vm:
        """A VM from a snapshot the caller can see (a template: a fork kept as a spec).

        Raises: VmNotFound, SnapshotNotFound, NameTaken, AddressInUse, HypervisorError.
        """
        ref = request.from_snapshot
        self.get(ref.vm_id)
        return await self.snapshots.create_from(
            ref, request.name, start=request.start, labels=request.labels
        )

    @_owned
    async def migrate(self, vm_id: str, request: MigrateRequest) -> Migration:
        """Raises: NodeNotFound, InvalidState, MigrationRefused, HypervisorError."""
        await self.standbys.drop(vm_id, "the VM migrates")  # its tap, its QEMU binary
        return await self.migrations.migrate(vm_id, request)

    # -- metrics ---------------------------------------------------------------

    async def metrics(self, vm_id: str) -> VmMetrics:
        """Raises: VmNotFound, InvalidState (no QEMU process)."""
        vm = self.get(vm_id)
        require_live(vm)
        return await vm_metrics(vm, self._machine(vm_id))

    # -- host ------------------------------------------------------------------

    async def host_devices(self) -> HostDevices:
        """PCI devices, IOMMU groups and vGPU types, with who holds what."""
        return await self._resources.host_devices()

    # -- shutdown --------------------------------------------------------------

    def live_machines(self) -> int:
        return len(self._machines)

    # -- this node, for the cluster (cluster/nodes.py) ------------------------

    @property
    def budget(self) -> HostBudget:
        """What host admission lets live VMs use on this host."""
        return self._budget

    async def fence(self, reason: str) -> None:
        """Kill every QEMU of this host at once (the node is cut off from its cluster:
        others may soon act on its VMs); each VM becomes ``error`` with ``reason``."""
        machines = list(self._machines.values())
        for machine in machines:
            machine.fail(reason)
        for machine in machines:
            await machine.exited.wait()
        if machines:
            log.error("fenced %d VM(s): %s", len(machines), reason)

    async def take_over(self, vm: Vm, from_node: str, *, boot: bool) -> Vm:
        """Record another node's VM here from its summary (its owner key names this node
        already: cluster.restart) and, with ``boot``, start it: a cold boot from its disk
        on the shared storage, its RAM lost with the node.

        Raises:
            Unsupported: this node has no shared storage. NameTaken: the tenant has a VM
                of that name here. HMError: the start was refused (the VM stays stopped).
        """
        reason = f"taken over from node {from_node}, which went down"
        record = vm.model_copy(
            update={
                "state": VmState.STOPPED,
                "state_reason": reason,
                "node": self._settings.node_name,
                "pid": None,
                "started_at": None,
                "accelerator": None,
                "gpu_assignment": None,
                "guest_agent": GuestAgentInfo(),
            }
        )
        self._shared(record)
        self._store.insert_vm(record)
        self.events.vm_taken_over(record, from_node, reason)
        self._announce()
        if not self._paths(vm.id).disk.exists():
            missing = f"{reason}; its disk is not on this node's shared storage"
            return self._set(vm.id, VmState.ERROR, missing)
        if not boot:
            return record
        async with self._lock(vm.id):
            return await self._start_locked(vm.id)

    def forget_taken(self, vm_id: str) -> bool:
        """Drop the record of a VM another node has taken over, leaving its files (they
        are the new owner's now); False, and nothing done, while its QEMU runs here."""
        try:
            vm = self._store.get_vm(vm_id)
        except VmNotFound:
            return False
        if vm.restart_policy != "on_node_failure":
            return False  # only these can be taken over
        if vm_id in self._machines or vm.state in LIVE_STATES:
            return False
        self._finish_delete(vm_id, files=False)
        return True

    def local_vms(self) -> Sequence[Vm]:
        """Every VM this host holds, whoever's (no caller check: for counting)."""
        return tuple(self._store.all_vms())


# SeaBIOS's copy of itself takes milliseconds; one still unfinished this long after a
# reboot was asked for is not running its firmware, and is reset as asked.
_BIOS_COPY_TIMEOUT_S = 5.0

# A guest can miss an ACPI power-button press (early in boot, before its handler
# runs); like a person at the machine, press again now and then until it powers off.
_POWER_BUTTON_REPEAT_S = 10.0


async def _press_power_button(machine: Machine) -> None:
    """Press until QEMU exits (the caller bounds the whole wait)."""
    while not machine.exited.is_set():
        with contextlib.suppress(HypervisorError):  # QEMU may be exiting already
            await qmp_commands.system_powerdown(machine)
        with trio.move_on_after(_POWER_BUTTON_REPEAT_S):
            await machine.exited.wait()
