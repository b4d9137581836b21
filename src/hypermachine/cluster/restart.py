"""Restart on a surviving node: a down node's VMs that ask for it boot again elsewhere.

A VM whose ``restart_policy`` is ``on_node_failure`` keeps its files (disk layers,
UEFI VARS, vTPM state, snapshots) in its folder on the shared storage, the same path
on every node. Every beat, each node with shared storage that is not cut off looks at
the owner keys: for each VM owned by a node that is ``down`` (its lease has expired,
so it fenced its QEMUs first, or it crashed), it reads the VM's summary and, if the
policy asks for it, tries to take the VM: one compare-and-swap of the owner key from
the down node to itself (:meth:`Ownership.take`), so of all the nodes trying exactly
one wins and the losers do nothing. The winner records the VM in its own store from
the summary (same id, uuid, MAC, spec) and, if it was last known live, boots it: a
cold boot, the RAM is lost. A VM of this node's store that another node has taken is
dropped from the store (its files stay: they are the new owner's) once no QEMU of it
runs here.

The case no etcd key can settle: a node whose server died while its QEMUs run on.
The winner's QEMU then opens the same qcow2 and QEMU's image locking refuses a second
writer ("Failed to get "write" lock"): the winner gives the VM back (the key names the
down node again, its own record goes, the files stay), so the one QEMU runs on and
one record of it remains (docs/cluster.md). A node gives back a VM at most once; the
other survivors may each try it once.
"""

from __future__ import annotations

import logging

import trio
from pydantic import ValidationError

from ..errors import HMError
from ..hypervisor.manager import Manager
from ..models import NodeState, Vm, VmState
from ..security.caller import SYSTEM, acting_as
from ..states import LIVE_STATES
from .etcd import Etcd, EtcdError
from .membership import Membership
from .ownership import Ownership, owner_key, view_key

__all__ = ["Restarts"]

log = logging.getLogger(__name__)

# A VM last seen in one of these was meant to run: it is booted again.
_BOOTED = LIVE_STATES - {VmState.STOPPING}
_SETTLED = {VmState.RUNNING, VmState.PAUSED, VmState.STOPPED, VmState.ERROR}
_BOOT_SETTLES_S = 120.0  # QEMU opening its disk, under TCG on a busy host


class Restarts:
    """This node's part in restarting down nodes' VMs (started only with shared storage)."""

    def __init__(
        self, etcd: Etcd, membership: Membership, ownership: Ownership, manager: Manager
    ) -> None:
        self._etcd = etcd
        self._membership = membership
        self._ownership = ownership
        self._manager = manager
        self._tried: set[str] = set()  # VMs this node took over and could not start

    async def run(self, beat_s: float) -> None:
        """Sweep every beat until cancelled."""
        while True:
            try:
                await self.sweep()
            except EtcdError as err:
                log.warning("down nodes' VMs not looked at: %s", err)
            except Exception:  # a bug here must not end the server: the next beat retries
                log.exception("the sweep of down nodes' VMs failed")
            await trio.sleep(beat_s)

    async def sweep(self) -> None:
        """Take over what down nodes leave, forget what was taken from this node.

        Raises:
            EtcdError: etcd refused or could not be reached.
        """
        me = self._membership.name
        if self._membership.cut_off:  # it may be the one the others see down
            return
        down = {
            node.name
            for node in await self._membership.nodes()
            if node.state is NodeState.DOWN and node.name != me
        }
        for vm_id, owner in (await self._ownership.owners()).items():
            if owner in down:
                await self._take(vm_id, owner)
            elif owner != me and self._manager.forget_taken(vm_id):
                log.warning(
                    "%s: node %s has taken it over; its record here is dropped", vm_id, owner
                )

    async def _take(self, vm_id: str, dead: str) -> None:
        summary = await self._summary(vm_id)
        if summary is None or vm_id in self._tried:
            return
        vm = summary[0]
        if vm.restart_policy != "on_node_failure":
            return
        if self._manager.owner_of(vm_id) is not None:
            return  # this node holds a record of it still (its QEMU runs here)
        if not await self._ownership.take(vm_id, dead):
            return  # another node won
        boot = vm.state in _BOOTED
        log.warning("%s: taken over from node %s, which is down (boot: %s)", vm_id, dead, boot)
        with acting_as(SYSTEM):
            try:
                taken = await self._manager.take_over(vm, dead, boot=boot)
                if boot:  # the boot's outcome: QEMU refused the disk, or it runs
                    taken = await self._manager.wait_for(vm_id, _SETTLED, _BOOT_SETTLES_S)
                failure = taken.state_reason if taken.state is VmState.ERROR else None
            except HMError as err:
                failure = err.message
        if failure is not None:
            await self._give_back(vm_id, dead, summary[1], failure)

    async def _give_back(self, vm_id: str, dead: str, summary: bytes, failure: str) -> None:
        """A takeover whose boot failed here (no room; or the down node's QEMU still
        holds the disk's write lock, its server alone having died) is undone: the key
        names the down node again and this node's record goes (the files stay), so one
        record of the VM remains and another survivor may try once."""
        self._tried.add(vm_id)
        log.error("%s: taken over but not started, given back to %s: %s", vm_id, dead, failure)
        if await self._ownership.give_back(vm_id, dead):
            self._manager.forget_taken(vm_id)
            # The summary this node published while it held the VM goes too: the others
            # see the VM as the down node last reported it (and may try it in turn).
            await self._etcd.put_if(view_key(vm_id), summary, holds=(owner_key(vm_id), dead))

    async def _summary(self, vm_id: str) -> tuple[Vm, bytes] | None:
        """The VM as its owner last reported it, and the summary as etcd holds it."""
        found = await self._etcd.get(view_key(vm_id))
        if found is None:
            return None
        try:
            return Vm.model_validate_json(found.value), found.value
        except ValidationError:
            log.warning("etcd holds an unreadable summary of %s", vm_id)
            return None
