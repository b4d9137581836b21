"""What the manager needs from outside the hypervisor layer, as protocols: an image
of the catalogue, the catalogue itself, the security layer's quotas, the cluster's
VM ownership, its count of live VMs and its other nodes. The server hands in the real ones
(``images.Catalogue``, ``security.Security``, ``cluster.ownership.Ownership``,
``cluster.quota.LiveLedger``, ``cluster.peers.Peers``); tests may hand in their own."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Protocol

from ..models import IncomingOffer, IncomingPorts, Vm

__all__ = [
    "CatalogueLike",
    "GuardLike",
    "ImageLike",
    "LiveCountLike",
    "OwnersLike",
    "PeersLike",
    "StorageCountLike",
]


class ImageLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def disk(self) -> Path | None: ...
    @property
    def kernel(self) -> Path | None: ...
    @property
    def initrd(self) -> Path | None: ...
    @property
    def append(self) -> str: ...
    @property
    def available(self) -> bool: ...
    @property
    def firmware(self) -> str: ...
    @property
    def sha256(self) -> str | None: ...


class CatalogueLike(Protocol):
    def get(self, name: str) -> ImageLike: ...
    def pull(self, name: str) -> ImageLike: ...


class GuardLike(Protocol):
    """The security layer as the manager sees it (``hypermachine.security.Security``)."""

    def vm_quota(self) -> int: ...
    def storage_quota_bytes(self) -> int: ...


class OwnersLike(Protocol):
    """VM ownership in a cluster (``hypermachine.cluster.ownership.Ownership``)."""

    async def hold(self, vm: Vm) -> None: ...
    async def release(self, vm_id: str) -> None: ...


class LiveCountLike(Protocol):
    """The cluster's count of each tenant's live VMs (``hypermachine.cluster.quota``)."""

    async def admit(self, vm: Vm, quota: int) -> None: ...
    async def leave(self, vm: Vm) -> None: ...


class PeersLike(Protocol):
    """The other nodes, as a live migration between nodes sees them
    (``hypermachine.cluster.peers.Peers``)."""

    node: str

    def psk(self, token: str, vm_uuid: str) -> str: ...
    async def url_of(self, node: str) -> str: ...
    async def offer(self, url: str, offer: IncomingOffer) -> None: ...
    async def upload(self, url: str, token: str, name: str, file: BinaryIO) -> None: ...
    async def open(self, url: str, token: str) -> IncomingPorts: ...
    async def commit(self, url: str, token: str) -> Vm: ...
    async def abort(self, url: str, token: str) -> None: ...
    async def hand_over(self, vm_id: str, to_node: str) -> bool: ...
    async def owner(self, vm_id: str) -> str | None: ...


class StorageCountLike(Protocol):
    """The cluster's count of each tenant's stored bytes on every node
    (``hypermachine.cluster.storage``)."""

    async def admit(self, tenant: str, used_bytes: int, quota_bytes: int) -> None: ...
    async def record(self, tenant: str, used_bytes: int) -> None: ...
