"""What the manager needs from outside the hypervisor layer, as protocols: an image
of the catalogue, the catalogue itself, the security layer's quotas, the cluster's
VM ownership and its count of live VMs. The server hands in the real ones
(``images.Catalogue``, ``security.Security``, ``cluster.ownership.Ownership``,
``cluster.quota.LiveLedger``); tests may hand in their own."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..models import Vm

__all__ = [
    "CatalogueLike",
    "GuardLike",
    "ImageLike",
    "LiveCountLike",
    "OwnersLike",
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


class StorageCountLike(Protocol):
    """The cluster's count of each tenant's stored bytes on every node
    (``hypermachine.cluster.storage``)."""

    async def admit(self, tenant: str, used_bytes: int, quota_bytes: int) -> None: ...
    async def record(self, tenant: str, used_bytes: int) -> None: ...
