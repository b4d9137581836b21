"""Which node runs a VM: one etcd key per VM, written in a transaction.

    /hypermachine/vms/<vm id>   the owning node's name

A node takes a VM (:meth:`Ownership.hold`) when it creates it and again before each
start: the key is created only if absent (a VM created before the node joined, or a
fork, is taken then), and a VM whose key names another node is refused. The key is
deleted with the VM, and only if it still names this node. With etcd unreachable,
nothing is created or started (a node cut off from the cluster must not start VMs).
A surviving node takes a down node's VM (:meth:`Ownership.take`, cluster.restart) by
changing the key only if it still names the down node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import ClusterUnavailable, OwnedElsewhere
from ..models import Vm
from .etcd import Etcd, EtcdError

if TYPE_CHECKING:
    from ..hypervisor.manager import Manager

log = logging.getLogger(__name__)

__all__ = ["Ownership", "owner_key"]


def owner_key(vm_id: str) -> str:
    return f"/hypermachine/vms/{vm_id}"


def view_key(vm_id: str) -> str:
    """Where the owner keeps the VM's summary for the cluster's lists (cluster.views)."""
    return f"/hypermachine/vm-views/{vm_id}"


class Ownership:
    """This node's side of VM ownership (the manager's ``owners`` hook)."""

    def __init__(self, etcd: Etcd, node: str, cut_off: Callable[[], bool]) -> None:
        self._etcd = etcd
        self._node = node
        self._cut_off = cut_off  # the membership's: True while the node is fenced

    async def hold(self, vm: Vm) -> None:
        """Make sure this node owns ``vm``, taking it if nobody does.

        Raises:
            OwnedElsewhere: another node owns it. ClusterUnavailable: etcd cannot be
                asked, or this node is cut off from the cluster.
        """
        if self._cut_off():
            raise ClusterUnavailable("this node is cut off from the cluster; it runs no VM")
        key = owner_key(vm.id)
        try:
            if await self._etcd.create(key, self._node):
                return
            found = await self._etcd.get(key)
        except EtcdError as err:
            raise ClusterUnavailable(f"VM ownership cannot be checked: {err}") from err
        owner = found.value.decode(errors="replace") if found is not None else None
        if owner != self._node:
            raise OwnedElsewhere(
                f"VM {vm.id} is owned by node {owner!r}, not this one ({self._node})",
                node=owner,
            )

    async def owner(self, vm_id: str) -> str | None:
        """The node the VM's key names, None when nobody owns it.

        Raises:
            EtcdError: etcd refused or could not be reached.
        """
        found = await self._etcd.get(owner_key(vm_id))
        return found.value.decode(errors="replace") if found is not None else None

    async def owners(self) -> dict[str, str]:
        """Every VM's owner, by VM id (one read).

        Raises:
            EtcdError: etcd refused or could not be reached.
        """
        prefix = owner_key("")
        found = await self._etcd.get_prefix(prefix)
        return {kv.key.removeprefix(prefix): kv.value.decode(errors="replace") for kv in found}

    async def take(self, vm_id: str, from_node: str) -> bool:
        """Make this node the VM's owner if its key still names ``from_node`` (one
        compare-and-swap: of the nodes trying at once, exactly one succeeds).

        Raises:
            EtcdError: etcd refused or could not be reached.
        """
        key = owner_key(vm_id)
        return await self._etcd.put_if(key, self._node, holds=(key, from_node))

    async def give_back(self, vm_id: str, to_node: str) -> bool:
        """Hand a VM this node took over back to ``to_node`` (its start failed here);
        False if the key no longer names this node.

        Raises:
            EtcdError: etcd refused or could not be reached.
        """
        key = owner_key(vm_id)
        return await self._etcd.put_if(key, to_node, holds=(key, self._node))

    async def release(self, vm_id: str) -> None:
        """Give the VM up (it is deleted); a key naming another node stays.

        Raises:
            ClusterUnavailable: etcd cannot be asked.
        """
        try:
            if await self._etcd.delete_if(owner_key(vm_id), self._node):
                await self._etcd.delete(view_key(vm_id))  # not a beat later (cluster.views)
        except EtcdError as err:
            raise ClusterUnavailable(f"VM ownership cannot be given up: {err}") from err


async def drop_moved(ownership: Ownership, manager: Manager, node: str) -> list[str]:
    """At start-up: the VMs this node runs that another node owns now and whose QEMU
    here has sent its state away (this server died during a migration, after the
    hand-over) are not this node's: their QEMUs go (``Manager.moved_away``).

    Raises:
        ClusterUnavailable: etcd cannot say who owns them.
    """
    try:
        owners = await ownership.owners()
    except EtcdError as err:
        raise ClusterUnavailable(f"VM ownership cannot be checked: {err}") from err
    dropped = []
    for vm in manager.live_vms():
        owner = owners.get(vm.id)
        if owner not in (None, node) and await manager.moved_away(vm.id):
            log.warning(
                "%s: moved to node %s while this server was away; dropped here", vm.id, owner
            )
            dropped.append(vm.id)
    return dropped
