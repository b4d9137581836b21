"""A migration's source talking to its destination node (docs/cluster.md).

Every call is a request signed with the cluster secret as the server itself
(:data:`~..security.caller.SYSTEM`): the destination's routes (``api.peer``) take
nothing else. Files travel in chunks of at most :data:`CHUNK_BYTES`, each signed
with its body like any forwarded request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, BinaryIO

import httpx
import trio

from ..errors import ClusterUnavailable, MigrationRefused, NodeNotFound
from ..models import IncomingOffer, IncomingPorts, NodeState, Vm
from ..security.caller import SYSTEM
from .etcd import EtcdError
from .forwarding import Forwarder
from .membership import Membership
from .ownership import Ownership

__all__ = ["CHUNK_BYTES", "PEER_PREFIX", "Peers"]

CHUNK_BYTES = 4 * 1024 * 1024
PEER_PREFIX = "/cluster/v1/migrations"


class Peers:
    """The other nodes of the cluster, as a migration's source sees them."""

    def __init__(self, forwarder: Forwarder, membership: Membership, ownership: Ownership) -> None:
        self._forwarder = forwarder
        self._membership = membership
        self._ownership = ownership
        self.node = forwarder.auth.node

    def psk(self, token: str, vm_uuid: str) -> str:
        """The migration's TLS key (hex), derived from the cluster secret on both nodes:
        it is never sent."""
        message = f"hm-migration\n{token}\n{vm_uuid}".encode()
        return hmac.new(self._forwarder.auth.secret, message, hashlib.sha256).hexdigest()

    async def url_of(self, node: str) -> str:
        """The API URL of ``node``, which must be up.

        Raises:
            NodeNotFound: no such node. ClusterUnavailable: it is down, or etcd cannot
                be asked.
        """
        try:
            nodes = {found.name: found for found in await self._membership.nodes()}
        except EtcdError as err:
            raise ClusterUnavailable(f"the cluster's nodes cannot be read: {err}") from err
        found = nodes.get(node)
        if found is None:
            raise NodeNotFound(f"no node {node!r} in the cluster", node=node)
        if found.state is not NodeState.UP:
            raise ClusterUnavailable(f"node {node!r} is down", node=node)
        return found.url

    async def offer(self, url: str, offer: IncomingOffer) -> None:
        """Raises: MigrationRefused (the node's reason), ClusterUnavailable."""
        await self._call(url, "POST", f"/{offer.token}", offer.model_dump_json().encode())

    async def upload(self, url: str, token: str, name: str, file: BinaryIO) -> None:
        """Send what ``file`` (opened by the caller) holds under ``name``, chunk by chunk.

        Raises: MigrationRefused, ClusterUnavailable.
        """
        offset = 0
        while chunk := await trio.to_thread.run_sync(file.read, CHUNK_BYTES):
            await self._call(url, "PUT", f"/{token}/files/{name}?offset={offset}", chunk)
            offset += len(chunk)

    async def open(self, url: str, token: str) -> IncomingPorts:
        """The destination QEMU waits: where. Raises: MigrationRefused, ClusterUnavailable."""
        answer = await self._call(url, "POST", f"/{token}/open", b"")
        return IncomingPorts.model_validate(answer)

    async def commit(self, url: str, token: str) -> Vm:
        """The stream is complete and the VM is the destination's (etcd): let it run.

        Raises: MigrationRefused, ClusterUnavailable.
        """
        return Vm.model_validate(await self._call(url, "POST", f"/{token}/commit", b""))

    async def abort(self, url: str, token: str) -> None:
        """Raises: MigrationRefused, ClusterUnavailable."""
        await self._call(url, "DELETE", f"/{token}", b"")

    async def hand_over(self, vm_id: str, to_node: str) -> bool:
        """Make ``to_node`` the VM's owner if this node still is (one compare-and-swap);
        whether ``to_node`` owns it now. When etcd did not answer the swap, the key is
        read again to learn what happened.

        Raises:
            ClusterUnavailable: etcd cannot say who owns the VM.
        """
        try:
            return await self._ownership.give_back(vm_id, to_node)
        except EtcdError:
            return await self.owner(vm_id) == to_node

    async def owner(self, vm_id: str) -> str | None:
        """Raises: ClusterUnavailable (etcd cannot be asked)."""
        try:
            return await self._ownership.owner(vm_id)
        except EtcdError as err:
            raise ClusterUnavailable(f"etcd cannot say who owns VM {vm_id}: {err}") from err

    async def _call(self, url: str, method: str, tail: str, body: bytes) -> Any:
        target = f"{PEER_PREFIX}{tail}".encode()
        headers = {"content-type": "application/octet-stream"}
        answer = await self._forwarder.send(url, method, target, body, headers, caller=SYSTEM)
        try:
            content = await answer.aread()
        except httpx.HTTPError as err:
            raise ClusterUnavailable(f"node at {url} broke off its answer: {err!r}") from err
        finally:
            await answer.aclose()
        try:
            parsed = json.loads(content) if content else None
        except ValueError:
            parsed = None
        if answer.status_code >= 400:
            error = parsed.get("error", {}) if isinstance(parsed, dict) else {}
            message = error.get("message") if isinstance(error, dict) else None
            reason = str(message or f"HTTP {answer.status_code}")
            raise MigrationRefused(f"the destination node refused: {reason}", reasons=[reason])
        return parsed
