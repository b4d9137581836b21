"""The cluster-wide view of VMs: each owner keeps a summary of its VMs in etcd.

    /hypermachine/vm-views/<vm id>   the VM as its owner last reported it (JSON ``Vm``)

Why a summary in etcd rather than asking every node: a node that is down cannot be
asked, and its VMs must still be listed (as ``unknown``). The owner rewrites a VM's
summary right after it changes (``Views.run`` waits on the manager's changes, and
checks again every beat), so another node's list may trail by one etcd write; a
``GET`` of one VM whose owner is up is forwarded to it and is never stale. A summary
is written only while the VM's owner key names this node (one transaction), so a
deleted VM's cannot come back; a VM made before the node joined shows elsewhere once
it is taken, at its next start.

Reading: this node's own VMs come from its store (fresh); the others' from their
summaries, held to the caller's tenant here (``Caller.sees``), so another tenant's
VM is never shown. A VM whose node is down is shown ``unknown``, its reason naming
the node and its last beat.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
from collections.abc import Iterable

import trio
from pydantic import ValidationError

from ..errors import BadRequest
from ..hypervisor.manager import Manager
from ..models import Node, NodeState, Vm, VmState
from ..security.caller import SYSTEM, acting_as, current_caller
from ..store import VmQuery
from .etcd import Etcd, EtcdError
from .membership import Membership
from .ownership import owner_key, view_key

__all__ = ["Views"]

log = logging.getLogger(__name__)

_VIEWS = view_key("")
_PAGE = 500


def _unknown(vm: Vm, node: Node | None) -> Vm:
    """``vm`` as shown while its node is down (or was never seen)."""
    since = f" since {node.updated_at.isoformat()}" if node is not None else ""
    reason = f"node {vm.node} is down{since}; its last known state was {vm.state.value}"
    return vm.model_copy(update={"state": VmState.UNKNOWN, "state_reason": reason, "pid": None})


class Views:
    """Publishes this node's VM summaries and reads everyone's."""

    def __init__(self, etcd: Etcd, membership: Membership, manager: Manager) -> None:
        self._etcd = etcd
        self._membership = membership
        self._manager = manager
        self._published: dict[str, str] = {}  # vm id -> the summary etcd holds

    # -- this node's summaries --------------------------------------------------

    def _local(self) -> dict[str, str]:
        """Every VM of this node (all tenants), as JSON."""
        found: dict[str, str] = {}
        cursor = None
        with acting_as(SYSTEM):
            while True:
                vms, cursor = self._manager.list(VmQuery(limit=_PAGE, cursor=cursor))
                found.update((vm.id, vm.model_dump_json()) for vm in vms)
                if cursor is None:
                    return found

    def _mine(self, vm_id: str) -> tuple[str, str]:
        """The compare that holds while this node owns ``vm_id``."""
        return owner_key(vm_id), self._membership.name

    async def publish(self) -> None:
        """Write the summaries that changed, delete those of VMs that are gone.

        Raises:
            EtcdError: etcd refused or could not be reached (the rest is retried).
        """
        current = self._local()
        for vm_id, doc in current.items():
            if self._published.get(vm_id) == doc:
                continue
            # Only while this node owns it: once the VM is deleted (its owner key first,
            # then its summary: Ownership.release), a summary taken before cannot return.
            if await self._etcd.put_if(view_key(vm_id), doc, holds=self._mine(vm_id)):
                self._published[vm_id] = doc
        for vm_id in set(self._published) - set(current):
            # Gone from here: deleted (its owner key went first) or taken over by another
            # node (cluster.restart), whose summary this must not remove.
            await self._etcd.delete_where(view_key(vm_id), holds=self._mine(vm_id))
            del self._published[vm_id]

    async def run(self, beat_s: float) -> None:
        """Publish after every change of this node's VMs, and at least every beat."""
        while True:
            try:
                await self.publish()
            except EtcdError as err:
                log.warning("VM summaries not published: %s", err)
            with trio.move_on_after(beat_s):
                await self._manager.wait_changed()

    # -- everyone's --------------------------------------------------------------

    def _shown(self, raw: bytes, nodes: dict[str, Node]) -> Vm | None:
        """Another node's VM from its summary, as the current caller is shown it; None
        for one the caller may not see, or one of this node's own (its store answers)."""
        try:
            vm = Vm.model_validate_json(raw)
        except ValidationError:
            log.warning("etcd holds an unreadable VM summary")
            return None
        if vm.node == self._membership.name or self._manager.owner_of(vm.id) is not None:
            return None  # this node's store holds its own VMs
        if not current_caller().sees(vm.tenant):
            return None
        node = nodes.get(vm.node or "")
        return vm if node is not None and node.state is NodeState.UP else _unknown(vm, node)

    async def _nodes(self) -> dict[str, Node]:
        return {node.name: node for node in await self._membership.nodes()}

    async def find(self, vm_id: str) -> Vm | None:
        """Another node's VM the current caller may see, or None.

        Raises:
            EtcdError: etcd refused or could not be reached.
        """
        found = await self._etcd.get(view_key(vm_id))
        return None if found is None else self._shown(found.value, await self._nodes())

    async def page(self, query: VmQuery) -> tuple[list[Vm], str | None]:
        """A page of every VM of the cluster the current caller may see, in creation
        order, filtered as ``query`` asks, and the cursor of the next page.

        Raises:
            EtcdError: etcd refused or could not be reached. BadRequest: a cursor this
                server did not hand out.
        """
        after = _decode(query.cursor) if query.cursor is not None else None
        mine: list[Vm] = []
        cursor = None
        whole = dataclasses.replace(query, limit=_PAGE, cursor=None)
        while True:
            vms, cursor = self._manager.list(dataclasses.replace(whole, cursor=cursor))
            mine += vms
            if cursor is None:
                break
        nodes = await self._nodes()
        theirs = [self._shown(kv.value, nodes) for kv in await self._etcd.get_prefix(_VIEWS)]
        shown = _matching([*mine, *(vm for vm in theirs if vm is not None)], query)
        ordered = sorted((vm for vm in shown if after is None or _order(vm) > after), key=_order)
        page = ordered[: query.limit]
        more = len(ordered) > query.limit
        return page, _encode(_order(page[-1])) if more else None


def _order(vm: Vm) -> tuple[str, str]:
    return vm.created_at.isoformat(), vm.id


def _encode(position: tuple[str, str]) -> str:
    raw = f"at:{position[0]}|{position[1]}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[str, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        kind, _, value = base64.urlsafe_b64decode(padded).decode().partition(":")
        at, _, vm_id = value.partition("|")
        if kind != "at" or not vm_id:
            raise ValueError(kind)
        return at, vm_id
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRequest("cursor is not one this server handed out", cursor=cursor) from err


def _matching(vms: Iterable[Vm], query: VmQuery) -> list[Vm]:
    """The VMs a list query's filters keep."""
    return [
        vm
        for vm in vms
        if (not query.states or vm.state in query.states)
        and (query.name is None or vm.name == query.name)
        and all(vm.labels.get(k) == v for k, v in query.labels.items())
    ]
