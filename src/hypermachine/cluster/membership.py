"""This node's place in the cluster: registered in etcd under a lease it keeps alive.

Keys (docs/cluster.md):

    /hypermachine/nodes/<name>   the node's last description (JSON ``Node``), no lease:
                                 it stays when the node is gone, so others list it down
    /hypermachine/alive/<name>   under the node's lease: it exists while the node is up

``Membership.run`` (started with ``nursery.start`` before the API serves) grants the
lease and writes both, then renews the lease and rewrites the description every
third of the TTL.

Fencing (Proxmox's watchdog rule): etcd ends the lease one TTL after the last renewal
it received, and the others may then act on this node's VMs. So once two thirds of
the TTL have passed since the last renewal that succeeded was sent (a renewal still
hanging is given up then), the node is *cut off* and stops its own VMs first
(``fence``): by the time anyone sees it ``down``, none of its QEMUs runs. A lease etcd
says has expired fences too, and the node then registers again under a new lease;
renewals that succeed again end the cut-off (the fenced VMs stay stopped).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio
from pydantic import ValidationError

from ..models import Node, NodeState
from .etcd import Etcd, EtcdError, LeaseLost

__all__ = ["Membership", "alive_key", "node_key"]

log = logging.getLogger(__name__)

_ROOT = "/hypermachine"
_NODES = f"{_ROOT}/nodes/"
_ALIVE = f"{_ROOT}/alive/"


def node_key(name: str) -> str:
    return f"{_NODES}{name}"


def alive_key(name: str) -> str:
    return f"{_ALIVE}{name}"


class Membership:
    """Registers this node and lists the cluster's nodes."""

    def __init__(
        self,
        etcd: Etcd,
        name: str,
        ttl_s: int,
        describe: Callable[[], Awaitable[Node]],
        fence: Callable[[str], Awaitable[None]],
    ) -> None:
        self._etcd = etcd
        self.name = name
        self._ttl_s = ttl_s
        self._describe = describe
        self._fence = fence
        self._lease = 0
        self.cut_off = False  # fenced: no renewal succeeded within two thirds of the TTL

    @property
    def lease(self) -> int:
        """This node's current lease (what it holds is deleted when the node goes down)."""
        return self._lease

    async def close(self) -> None:
        """Close the etcd client (after :meth:`run` has ended)."""
        await self._etcd.aclose()

    async def register(self) -> None:
        """Take a new lease and write this node's keys.

        Raises:
            EtcdError: etcd refused or could not be reached.
        """
        self._lease = await self._etcd.grant(self._ttl_s)
        await self._etcd.put(alive_key(self.name), self.name, lease=self._lease)
        await self._publish()
        log.info("node %s registered in etcd (lease %x, %d s)", self.name, self._lease, self._ttl_s)

    async def _publish(self) -> None:
        await self._etcd.put(node_key(self.name), (await self._describe()).model_dump_json())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register (a failure here is the caller's: the server does not start), then
        keep the lease alive until cancelled; the lease is revoked on the way out."""
        await self.register()
        task_status.started()
        try:
            await self._beat()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await self._etcd.revoke(self._lease)
                except EtcdError as err:
                    log.warning("node %s: lease not revoked: %s", self.name, err)

    async def _beat(self) -> None:
        beat = self._ttl_s / 3
        fence_after = self._ttl_s * 2 / 3
        renewed = trio.current_time()  # when the last renewal that succeeded was sent
        while True:
            await trio.sleep(beat)
            sent = trio.current_time()
            problem = "no answer before the fencing deadline"
            # Until fenced, a renewal may take until the fencing deadline; after, a TTL.
            deadline = sent + self._ttl_s if self.cut_off else renewed + fence_after
            with trio.move_on_at(deadline):
                try:
                    await self._renew()
                    problem = ""
                except EtcdError as err:
                    problem = str(err)
            if not problem:
                renewed = sent
                if self.cut_off:
                    self.cut_off = False
                    log.warning("node %s reaches etcd again", self.name)
            elif not self.cut_off and trio.current_time() >= renewed + fence_after:
                await self._cut_off(f"its etcd lease could not be renewed: {problem}")

    async def _renew(self) -> None:
        try:
            await self._etcd.keep_alive(self._lease)
        except LeaseLost:
            await self._cut_off("its etcd lease expired")
            await self.register()
        await self._publish()

    async def _cut_off(self, reason: str) -> None:
        self.cut_off = True
        log.error("node %s is cut off from the cluster (%s): fencing its VMs", self.name, reason)
        await self._fence(f"fenced: node {self.name} is cut off from the cluster ({reason})")

    async def nodes(self) -> list[Node]:
        """Every node that ever registered, ``up`` while its lease lives.

        Raises:
            EtcdError: etcd refused or could not be reached.
        """
        alive = {kv.key.removeprefix(_ALIVE) for kv in await self._etcd.get_prefix(_ALIVE)}
        found = []
        for kv in await self._etcd.get_prefix(_NODES):
            try:
                node = Node.model_validate_json(kv.value)
            except ValidationError:
                log.warning("etcd holds an unreadable node record under %s", kv.key)
                continue
            state = NodeState.UP if node.name in alive else NodeState.DOWN
            found.append(node.model_copy(update={"state": state}))
        return sorted(found, key=lambda node: node.name)
