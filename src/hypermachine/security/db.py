"""SQLite tables of the security layer: API keys (hashed) and the audit log.

They live in the server's database file next to the VMs, on a connection of their
own, so ``hypermachine key …`` and a running server share them: a key created or
revoked from the CLI counts on the server's next request. A cluster keeps its keys in
etcd instead (``cluster.keys``); each node's audit log stays here, naming the node.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from ..errors import KeyNotFound
from ..store import open_database
from .caller import Caller, Tier
from .keybook import hash_key, new_key
from .models import AuditEntry, CreatedKey, KeyInfo

__all__ = ["LocalKeys", "SecurityStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    name TEXT NOT NULL,
    tenant TEXT NOT NULL,
    tier TEXT NOT NULL,
    admin INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    key_id TEXT,
    tenant TEXT NOT NULL,
    operation TEXT NOT NULL,
    target TEXT,
    outcome TEXT NOT NULL,
    details TEXT NOT NULL DEFAULT '{}',
    node TEXT NOT NULL DEFAULT ''
);
"""
_KEY_COLUMNS = "id, prefix, name, tenant, tier, admin, created_at, revoked_at"


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _key_info(row: tuple[object, ...]) -> KeyInfo:
    fields = dict(zip(_KEY_COLUMNS.split(", "), row, strict=True))
    return KeyInfo.model_validate({**fields, "admin": bool(fields["admin"])})


class SecurityStore:
    """Keys and audit entries; short synchronous calls from the Trio thread."""

    def __init__(self, path: Path) -> None:
        self._db = open_database(path, _SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(audit)")}
        if "details" not in columns:  # a database from before audit details
            self._db.execute("ALTER TABLE audit ADD COLUMN details TEXT NOT NULL DEFAULT '{}'")
        if "node" not in columns:  # a database from before audit entries named the node
            self._db.execute("ALTER TABLE audit ADD COLUMN node TEXT NOT NULL DEFAULT ''")

    def close(self) -> None:
        self._db.close()

    # -- keys -----------------------------------------------------------------

    def create_key(
        self, *, name: str, tier: Tier, admin: bool, tenant: str | None = None
    ) -> CreatedKey:
        """Make a new key; the returned secret is never stored and cannot be shown again."""
        info = new_key(name=name, tier=tier, admin=admin, tenant=tenant)
        self._db.execute(
            "INSERT INTO api_keys(id, hash, prefix, name, tenant, tier, admin, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (info.id, hash_key(info.key), info.prefix, name, info.tenant, tier, int(admin),
             info.created_at.isoformat()),
        )  # fmt: skip
        return info

    def list_keys(self) -> list[KeyInfo]:
        rows = self._db.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at")
        return [_key_info(row) for row in rows.fetchall()]

    def revoke_key(self, key_id: str) -> KeyInfo:
        """Raises KeyNotFound. Revoking twice keeps the first revocation time."""
        self._db.execute(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?",
            (_now(), key_id),
        )
        row = self._db.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
        ).fetchone()
        if row is None:
            raise KeyNotFound(f"no API key with id {key_id!r}", id=key_id)
        return _key_info(row)

    def any_keys(self) -> bool:
        """Whether a key was ever created (revoked ones count: revoking never opens up)."""
        return self._db.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is not None

    def caller_for(self, secret: str) -> Caller | None:
        """The caller a presented key stands for; None when unknown or revoked."""
        row = self._db.execute(
            "SELECT id, tenant, tier, admin FROM api_keys WHERE hash = ? AND revoked_at IS NULL",
            (hash_key(secret),),
        ).fetchone()
        if row is None:
            return None
        return Caller(key_id=row[0], tenant=row[1], tier=row[2], admin=bool(row[3]))

    # -- audit ----------------------------------------------------------------

    def record(
        self,
        caller: Caller,
        operation: str,
        target: str | None,
        outcome: str,
        details: Mapping[str, object] | None = None,
        *,
        node: str = "",
    ) -> None:
        self._db.execute(
            "INSERT INTO audit(time, key_id, tenant, operation, target, outcome, details, node) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                _now(),
                caller.key_id,
                caller.tenant,
                operation,
                target,
                outcome,
                json.dumps(dict(details or {}), default=str),
                node,
            ),
        )

    def audit_page(self, *, limit: int, before: int | None) -> tuple[list[AuditEntry], int | None]:
        """Newest first; ``before`` is the ``next_cursor`` of the previous page."""
        rows = self._db.execute(
            "SELECT id, time, key_id, tenant, operation, target, outcome, node, details "
            "FROM audit "
            "WHERE id < ? ORDER BY id DESC LIMIT ?",
            (before if before is not None else 2**62, limit + 1),
        ).fetchall()
        names = ("id", "time", "key_id", "tenant", "operation", "target", "outcome", "node")
        entries = [
            AuditEntry.model_validate(
                {**dict(zip(names, r[:-1], strict=True)), "details": json.loads(r[-1])}
            )
            for r in rows
        ]
        more = len(entries) > limit
        return entries[:limit], (entries[limit - 1].id if more else None)


class LocalKeys:
    """This host's keys, in its SQLite database (a single host)."""

    def __init__(self, store: SecurityStore) -> None:
        self._store = store

    async def create_key(
        self, *, name: str, tier: Tier, admin: bool, tenant: str | None = None
    ) -> CreatedKey:
        return self._store.create_key(name=name, tier=tier, admin=admin, tenant=tenant)

    async def list_keys(self) -> list[KeyInfo]:
        return self._store.list_keys()

    async def revoke_key(self, key_id: str) -> KeyInfo:
        return self._store.revoke_key(key_id)

    async def any_keys(self) -> bool:
        return self._store.any_keys()

    async def caller_for(self, secret: str) -> Caller | None:
        return self._store.caller_for(secret)
