"""Where API keys are kept: a :class:`KeyBook`, this host's SQLite (``db.LocalKeys``) or
the cluster's etcd (``cluster.keys``).

Only a SHA-256 of each key is stored; keys carry 256 random bits, so a fast hash is
enough. :func:`new_key` makes a key the same way for either book.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime
from typing import Protocol

from .caller import Caller, Tier
from .models import CreatedKey, KeyInfo

__all__ = ["KEY_PREFIX", "KeyBook", "hash_key", "new_key"]

KEY_PREFIX = "hm_"
_KEY_BYTES = 32  # 256 bits of randomness
_SHOWN_CHARS = 10


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(*, name: str, tier: Tier, admin: bool, tenant: str | None = None) -> CreatedKey:
    """A new key; its secret is shown once and never stored (only :func:`hash_key`)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(_KEY_BYTES)
    return CreatedKey(
        id=f"key-{secrets.token_hex(6)}",
        name=name,
        tenant=tenant or name,
        tier=tier,
        admin=admin,
        prefix=secret[:_SHOWN_CHARS],
        created_at=datetime.now(UTC),
        key=secret,
    )


class KeyBook(Protocol):
    """The API keys a server accepts.

    Every method may raise ``ClusterUnavailable`` (the cluster's book, etcd unreachable).
    """

    async def create_key(
        self, *, name: str, tier: Tier, admin: bool, tenant: str | None = None
    ) -> CreatedKey: ...

    async def list_keys(self) -> list[KeyInfo]: ...

    async def revoke_key(self, key_id: str) -> KeyInfo:
        """Raises KeyNotFound. Revoking twice keeps the first revocation time."""
        ...

    async def any_keys(self) -> bool:
        """Whether a key was ever created (revoked ones count: revoking never opens up)."""
        ...

    async def caller_for(self, secret: str) -> Caller | None:
        """The caller a presented key stands for; None when unknown or revoked."""
        ...
