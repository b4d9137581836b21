"""The cluster's API keys, in etcd: a key made on any node (or by ``hypermachine key
create --etcd …``) works on every node, and one revoked anywhere is refused everywhere.

Each key is one etcd key, ``/hypermachine/api-keys/<sha256 of the secret>``, holding
its description (:class:`KeyInfo`, never the secret): checking a presented key is a
single read, made on each request, so a revocation counts on every node at once.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ..errors import ClusterUnavailable, KeyNotFound
from ..security.caller import Caller, Tier
from ..security.keybook import hash_key, new_key
from ..security.models import CreatedKey, KeyInfo
from .etcd import Etcd, EtcdError

__all__ = ["KEYS_PREFIX", "ClusterKeys"]

KEYS_PREFIX = "/hypermachine/api-keys/"
_REVOKE_ATTEMPTS = 5


def _unavailable(err: EtcdError) -> ClusterUnavailable:
    return ClusterUnavailable(f"the cluster's API keys cannot be read: {err}")


class ClusterKeys:
    """A :class:`~hypermachine.security.keybook.KeyBook` on etcd."""

    def __init__(self, etcd: Etcd) -> None:
        self._etcd = etcd

    async def create_key(
        self, *, name: str, tier: Tier, admin: bool, tenant: str | None = None
    ) -> CreatedKey:
        created = new_key(name=name, tier=tier, admin=admin, tenant=tenant)
        info = KeyInfo.model_validate(created.model_dump(exclude={"key"}))
        try:
            stored = await self._etcd.create(
                KEYS_PREFIX + hash_key(created.key), info.model_dump_json()
            )
        except EtcdError as err:
            raise _unavailable(err) from err
        if not stored:  # 256 random bits collided: never in practice
            raise ClusterUnavailable("a key with this hash exists already; try again")
        return created

    async def _all(self) -> list[tuple[str, bytes, KeyInfo]]:
        try:
            found = await self._etcd.get_prefix(KEYS_PREFIX)
        except EtcdError as err:
            raise _unavailable(err) from err
        return [(kv.key, kv.value, KeyInfo.model_validate_json(kv.value)) for kv in found]

    async def list_keys(self) -> list[KeyInfo]:
        return sorted((info for _, _, info in await self._all()), key=lambda k: k.created_at)

    async def revoke_key(self, key_id: str) -> KeyInfo:
        """Raises KeyNotFound. Revoking twice keeps the first revocation time."""
        for _ in range(_REVOKE_ATTEMPTS):
            found = [(k, raw, info) for k, raw, info in await self._all() if info.id == key_id]
            if not found:
                raise KeyNotFound(f"no API key with id {key_id!r}", id=key_id)
            key, raw, info = found[0]
            if info.revoked_at is not None:
                return info
            revoked = info.model_copy(update={"revoked_at": datetime.now(UTC)})
            try:
                doc = revoked.model_dump_json()
                if await self._etcd.put_if(key, doc, holds=(key, raw.decode())):
                    return revoked
            except EtcdError as err:
                raise _unavailable(err) from err
        raise ClusterUnavailable(f"key {key_id} kept changing while being revoked; try again")

    async def any_keys(self) -> bool:
        try:
            return await self._etcd.any_under(KEYS_PREFIX)
        except EtcdError as err:
            raise _unavailable(err) from err

    async def caller_for(self, secret: str) -> Caller | None:
        try:
            found = await self._etcd.get(KEYS_PREFIX + hash_key(secret))
        except EtcdError as err:
            raise _unavailable(err) from err
        if found is None:
            return None
        info = KeyInfo.model_validate_json(found.value)
        if info.revoked_at is not None:
            return None
        return Caller(key_id=info.id, tenant=info.tenant, tier=info.tier, admin=info.admin)
