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

A server that is killed or hangs cannot fence, so each deadline it would fence at goes
to ``arm`` too (the node's watchdog: ``cluster.feeder``), which kills this node's
QEMUs once that moment and a twelfth of the TTL pass with no newer one. For the same
reason a server leaving while QEMUs of this node run (``qemus_running``) does not
revoke its lease: it renews it a last time and leaves it to run out, and the watchdog
fences at that deadline unless a server of this node is back and feeding it first
(it re-adopts them).
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
        *,
        arm: Callable[[float], None] = lambda deadline: None,
        qemus_running: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._etcd = etcd
        self.name = name
        self._ttl_s = ttl_s
        self._fence_after = ttl_s * 2 / 3
        self._describe = describe
        self._fence = fence
        self._arm = arm  # told each moment the node would fence itself (Trio's clock)
        self._qemus_running = qemus_running  # None: the lease is always revoked on leaving
        self._lease = 0
        self._renewed_at = 0.0  # when the last renewal (or grant) that succeeded was sent
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
        sent = trio.current_time()
        self._lease = await self._etcd.grant(self._ttl_s)
        await self._etcd.put(alive_key(self.name), self.name, lease=self._lease)
        await self._publish()
        self._renewed(sent)
        log.info("node %s registered in etcd (lease %x, %d s)", self.name, self._lease, self._ttl_s)

    async def _publish(self) -> None:
        await self._etcd.put(node_key(self.name), (await self._describe()).model_dump_json())

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register (a failure here is the caller's: the server does not start), then
        keep the lease alive until cancelled; on the way out the lease is revoked, or
        left to run out while QEMUs of this node run."""
        await self.register()
        task_status.started()
        try:
            await self._beat()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await self._leave()

    def _renewed(self, sent: float) -> None:
        """A renewal (or grant) sent at ``sent`` succeeded: the node fences itself two
        thirds of a TTL later unless it renews again, and its watchdog a twelfth of a
        TTL after that (a server that lives fences first and records why; the lease
        lasts at least a quarter of a TTL longer)."""
        self._renewed_at = sent
        self._arm(self._watchdog_at)

    @property
    def _watchdog_at(self) -> float:
        return self._renewed_at + self._fence_after + self._ttl_s / 12

    async def _beat(self) -> None:
        beat = self._ttl_s / 3
        while True:
            await trio.sleep(beat)
            sent = trio.current_time()
            problem = "no answer before the fencing deadline"
            # Until fenced, a renewal may take until the fencing deadline; after, a TTL.
            fencing_at = self._renewed_at + self._fence_after
            with trio.move_on_at(sent + self._ttl_s if self.cut_off else fencing_at):
                try:
                    await self._renew()
                    problem = ""
                except EtcdError as err:
                    problem = str(err)
            if not problem:
                self._renewed(sent)
                if self.cut_off:
                    self.cut_off = False
                    log.warning("node %s reaches etcd again", self.name)
            elif not self.cut_off and trio.current_time() >= fencing_at:
                await self._cut_off(f"its etcd lease could not be renewed: {problem}")

    async def _renew(self) -> None:
        try:
            await self._etcd.keep_alive(self._lease)
        except LeaseLost:
            await self._cut_off("its etcd lease expired")
            await self.register()
        await self._publish()

    async def _leave(self) -> None:
        """Revoke the lease (the others see this node ``down`` at once), unless QEMUs
        of this node run: they must not outlive it, and a server of this node started
        again soon re-adopts them. Then the lease is renewed a last time and left to
        run out; the watchdog, armed with that renewal, kills them three quarters of a
        TTL later unless a new server feeds it first."""
        if self._qemus_running is None or not await self._qemus_running():
            try:
                await self._etcd.revoke(self._lease)
            except EtcdError as err:
                log.warning("node %s: lease not revoked: %s", self.name, err)
            return
        sent = trio.current_time()
        try:
            await self._etcd.keep_alive(self._lease)
        except EtcdError as err:
            log.warning("node %s: no last renewal: %s", self.name, err)
        else:
            self._renewed(sent)
        left = self._watchdog_at - trio.current_time()
        log.warning(
            "node %s leaves with QEMUs running: its lease is left to run out, and its "
            "watchdog kills them in %.1f s unless a server of this node is back by then",
            self.name,
            max(left, 0.0),
        )

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
