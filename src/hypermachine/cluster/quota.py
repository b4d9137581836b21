"""A tenant's live-VM quota counted across the cluster, not per node.

Each live VM (starting, running, paused, …) of a tenant is one etcd key,
``/hypermachine/live/<tenant>/<vm id>``, naming its node and held by that node's
lease: a node that goes down takes its VMs out of the count with it (it fences them
first), and a node whose server restarts counts its running VMs again under its new
lease (:meth:`LiveLedger.recount`). Admission reads the tenant's keys and adds the
VM's in one transaction that holds only if the tenant's guard key,
``/hypermachine/live-guard/<tenant>``, has not changed since the read; every
admission rewrites the guard, so two nodes starting the tenant's last allowed VM at
once cannot both succeed (the loser reads again). Leaving needs no guard: it only
makes room.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..errors import ClusterUnavailable, QuotaExceeded
from ..models import Vm
from .etcd import Etcd, EtcdError, KeyValue

__all__ = ["LIVE_PREFIX", "LiveLedger", "guarded_count"]

Plan = Callable[[list[KeyValue]], list[tuple[str, str, int]]]


async def guarded_count(etcd: Etcd, guard: str, prefix: str, plan: Plan, what: str) -> None:
    """One admission against a count kept under ``prefix`` (``Etcd.guarded_write``).

    Raises:
        ClusterUnavailable: etcd cannot be asked, or ``what`` kept changing. Whatever
            ``plan`` raises (the quota's refusal).
    """
    try:
        written = await etcd.guarded_write(guard, prefix, plan)
    except EtcdError as err:
        raise ClusterUnavailable(f"{what} cannot be counted: {err}") from err
    if not written:
        raise ClusterUnavailable(f"{what} kept changing; try again")


LIVE_PREFIX = "/hypermachine/live/"
_GUARD_PREFIX = "/hypermachine/live-guard/"


def _live_key(tenant: str, vm_id: str) -> str:
    return f"{LIVE_PREFIX}{tenant}/{vm_id}"


class LiveLedger:
    """This node's side of the cluster's count of live VMs."""

    def __init__(self, etcd: Etcd, node: str, lease: Callable[[], int]) -> None:
        self._etcd = etcd
        self._node = node
        self._lease = lease  # the membership's current lease

    async def admit(self, vm: Vm, quota: int) -> None:
        """Count ``vm`` live, unless its tenant has ``quota`` live VMs already (0: no
        limit).

        Raises:
            QuotaExceeded: the tenant is at its quota, counted on every node.
            ClusterUnavailable: etcd cannot be asked, or kept changing.
        """
        guard, mine = _GUARD_PREFIX + vm.tenant, _live_key(vm.tenant, vm.id)

        def plan(live: list[KeyValue]) -> list[tuple[str, str, int]]:
            current = sum(1 for kv in live if kv.key != mine)
            if quota > 0 and current >= quota:
                raise QuotaExceeded(
                    f"tenant {vm.tenant!r} already has {current} live VMs in the "
                    f"cluster; its tier allows {quota}",
                    limit=quota,
                    current=current,
                )
            return [(guard, vm.id, 0), (mine, self._node, self._lease())]

        what = f"tenant {vm.tenant!r}'s live VMs"
        await guarded_count(self._etcd, guard, f"{LIVE_PREFIX}{vm.tenant}/", plan, what)

    async def recount(self, vms: Iterable[Vm]) -> None:
        """Count ``vms`` live under this node's current lease: the VMs that kept
        running while the server restarted (its old lease, and their keys, are gone).

        Raises:
            ClusterUnavailable: etcd cannot be asked.
        """
        try:
            for vm in vms:
                guard = _GUARD_PREFIX + vm.tenant  # rewritten: an admission reading now retries
                await self._etcd.put(guard, vm.id)
                await self._etcd.put(_live_key(vm.tenant, vm.id), self._node, lease=self._lease())
        except EtcdError as err:
            raise ClusterUnavailable(f"the node's live VMs cannot be counted: {err}") from err

    async def leave(self, vm: Vm) -> None:
        """``vm`` is no longer live (a key another node wrote stays).

        Raises:
            ClusterUnavailable: etcd cannot be asked.
        """
        try:
            await self._etcd.delete_if(_live_key(vm.tenant, vm.id), self._node)
        except EtcdError as err:
            raise ClusterUnavailable(f"the VM cannot leave the live count: {err}") from err
