"""A tenant's storage quota counted across the cluster, not per node.

Each node keeps, per tenant, one key ``/hypermachine/storage/<tenant>/<node>`` holding
the bytes the tenant's VM folders take on that node (disks, snapshots, saved RAM: what
a single host measures for the quota). The keys have **no lease**: a node that is
down still has its files, and they come back with it, so its count stays; the node
rewrites its keys from its real files when it starts (:meth:`StorageLedger.recount`),
so a count lost or changed meanwhile is put right before it serves.

A node writes its key in one transaction that holds only if the tenant's guard key,
``/hypermachine/storage-guard/<tenant>``, has not changed since it read the tenant's
keys; every write rewrites the guard. Admission (:meth:`StorageLedger.admit`) writes
only if the other nodes' bytes plus this node's fit the quota, so two nodes taking
the tenant's last room at once cannot both succeed (the loser reads again and is
refused).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ClusterUnavailable
from ..security.admission import check_storage
from .etcd import Etcd, EtcdError, KeyValue
from .quota import guarded_count

__all__ = ["STORAGE_PREFIX", "StorageLedger"]

STORAGE_PREFIX = "/hypermachine/storage/"
_GUARD_PREFIX = "/hypermachine/storage-guard/"


def _count_key(tenant: str, node: str) -> str:
    return f"{STORAGE_PREFIX}{tenant}/{node}"


def _bytes(kv: KeyValue) -> int:
    try:
        return int(kv.value)
    except ValueError as err:
        raise EtcdError(f"{kv.key} holds no byte count") from err


class StorageLedger:
    """This node's side of the cluster's count of each tenant's stored bytes."""

    def __init__(self, etcd: Etcd, node: str) -> None:
        self._etcd = etcd
        self._node = node

    async def admit(self, tenant: str, used_bytes: int, quota_bytes: int) -> None:
        """Count ``used_bytes`` as what ``tenant`` holds on this node, unless with what
        it holds on the other nodes that is more than ``quota_bytes`` (0: no limit).

        Raises:
            QuotaExceeded: over the quota, counted on every node (nothing is written).
            ClusterUnavailable: etcd cannot be asked, or the count kept changing.
        """
        guard, mine = _GUARD_PREFIX + tenant, _count_key(tenant, self._node)

        def plan(counts: list[KeyValue]) -> list[tuple[str, str, int]]:
            others = sum(_bytes(kv) for kv in counts if kv.key != mine)
            where = "on the cluster's nodes together"
            check_storage(tenant, others + used_bytes, quota_bytes, where=where)
            return [(guard, self._node, 0), (mine, str(used_bytes), 0)]

        what = f"tenant {tenant!r}'s storage"
        await guarded_count(self._etcd, guard, f"{STORAGE_PREFIX}{tenant}/", plan, what)

    async def record(self, tenant: str, used_bytes: int) -> None:
        """Count ``used_bytes`` as what ``tenant`` holds on this node, whatever the total
        (files came or went without an admission; an admission reading meanwhile reads
        again).

        Raises:
            ClusterUnavailable: etcd cannot be asked.
        """
        await self.admit(tenant, used_bytes, 0)

    async def recount(self, usage: Mapping[str, int]) -> None:
        """Count what each tenant holds on this node from ``usage`` (tenant -> bytes of
        its VM folders here), and 0 for a tenant counted here before that holds nothing
        here now.

        Raises:
            ClusterUnavailable: etcd cannot be asked.
        """
        suffix = f"/{self._node}"
        try:
            counted = await self._etcd.get_prefix(STORAGE_PREFIX)
        except EtcdError as err:
            raise ClusterUnavailable(f"the node's storage cannot be counted: {err}") from err
        before = {
            kv.key.removeprefix(STORAGE_PREFIX).removesuffix(suffix)
            for kv in counted
            if kv.key.endswith(suffix)
        }
        for tenant in sorted(before | set(usage)):
            await self.record(tenant, usage.get(tenant, 0))
