"""Re-adoption: after a server restart, each VM is picked up where it was left.

A VM recorded live whose QEMU still runs (checked by the UUID on its command line)
is supervised again: QMP reconnected, its swtpm and host resources found again, a
guest that a launch or a snapshot had left paused let run. One whose QEMU is gone
settles in the state its saved RAM allows (``snapshot_service.gone_state``); one
caught creating is ``error``; one caught deleting is deleted.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable
from typing import Any, Protocol

import psutil

from ..config import Settings
from ..errors import HypervisorError
from ..models import Vm, VmState
from ..states import LIVE_STATES
from .devices.resources import HostResources
from .migration_service import MigrationService
from .platform import vmplatform
from .qemu import qmp_commands
from .qemu.machine import Machine, adopt_pid
from .qemu.qmp import QmpBridge
from .snapshot_service import SnapshotService
from .vmfiles.layout import VmPaths

__all__ = ["Readoption", "ReadoptionHost"]

log = logging.getLogger(__name__)

# QEMU run states in which a snapshot had paused the guest (the server died meanwhile).
_SNAPSHOT_PAUSED = frozenset({"paused", "postmigrate", "finish-migrate"})


class ReadoptionHost(Protocol):
    """The manager as re-adoption sees it."""

    _settings: Settings
    _bridge: QmpBridge
    _resources: HostResources
    snapshots: SnapshotService
    migrations: MigrationService

    def _paths(self, vm_id: str) -> VmPaths: ...
    def _set(self, vm_id: str, state: VmState, reason: str | None, **extra: Any) -> Vm: ...
    async def _release(self, vm_id: str) -> None: ...
    async def _supervise(self, machine: Machine) -> None: ...
    def _finish_delete(self, vm_id: str) -> None: ...
    def stop(self, vm_id: str, *, force: bool = False) -> Awaitable[Vm]: ...


class Readoption:
    """Recovers the manager's VMs at start-up (``Manager.run``, before it reports ready)."""

    def __init__(self, manager: ReadoptionHost) -> None:
        self._m = manager

    async def recover(self, vm: Vm) -> None:
        """Pick up where the last server left ``vm``: supervise its QEMU again if it still
        runs, else settle the state it was left in."""
        paths = self._m._paths(vm.id)
        prior = None
        if vm.state in (VmState.SNAPSHOTTING, VmState.RESTORING):
            prior = self._m.snapshots.recover_prior_state(vm)
        if vm.state in LIVE_STATES:
            if await self._m.migrations.recover(vm) and vm.state is VmState.RUNNING:
                prior = VmState.RUNNING  # its QEMU may be paused for the switch-over
            pid = adopt_pid(paths, vm.uuid)
            if pid is not None and self._m.snapshots.hibernation_written(vm):
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()  # finish the hibernation it was in
                pid = None
            if pid is None:
                await self._m._release(vm.id)
                vmplatform.after_exit(paths)
                paths.clear_runtime()
                self._m._set(vm.id, *self._m.snapshots.gone_state(vm))
                return
            vmplatform.adopt(vm, paths)
            self._m._resources.adopt(vm, paths)
            await self._adopt(vm, pid, paths, resume_guest=prior is VmState.RUNNING)
        elif vm.state is VmState.CREATING:
            self._m._set(vm.id, VmState.ERROR, "creation was interrupted by a server restart")
        elif vm.state is VmState.DELETING:
            await self._m._release(vm.id)
            self._m._finish_delete(vm.id)

    async def _adopt(
        self,
        vm: Vm,
        pid: int,
        paths: VmPaths,
        *,
        resume_guest: bool = False,
    ) -> None:
        """Supervise a QEMU found running; ``resume_guest``: a snapshot had paused it."""
        machine = Machine(vm_id=vm.id, pid=pid, paths=paths)
        try:
            await machine.connect(self._m._bridge, self._m._settings.qmp_connect_timeout_s)
            status = await qmp_commands.query_status(machine)
        except HypervisorError as err:
            log.error("%s: cannot re-adopt QEMU pid %d: %s", vm.id, pid, err.message)
            machine.kill()
            self._m._set(vm.id, VmState.ERROR, f"could not re-adopt QEMU: {err.message}")
            return
        run_state = status.status
        if run_state == "inmigrate":  # we died while it loaded saved RAM: start again later
            machine.kill()
            self._m._set(vm.id, *self._m.snapshots.gone_state(vm))
            return
        if run_state == "prelaunch" or (resume_guest and run_state in _SNAPSHOT_PAUSED):
            with contextlib.suppress(HypervisorError):  # a RAM save still going
                await qmp_commands.migrate_cancel(machine)
            await qmp_commands.cont(machine)  # we died between launch (or a pause) and `cont`
            run_state = "running"
        state = VmState.PAUSED if run_state == "paused" else VmState.RUNNING
        self._m._set(vm.id, state, None, pid=pid)
        await self._m._supervise(machine)
        log.info("%s: re-adopted QEMU pid %d (%s)", vm.id, pid, state.value)
        if vm.state is VmState.STOPPING:
            await self._m.stop(vm.id, force=True)
