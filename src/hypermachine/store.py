"""SQLite persistence: VMs, idempotency records and the event log.

Each VM row keeps the full :class:`~hypermachine.models.Vm` document as JSON plus
the columns queries filter on. Every state change is written here before it is
reported to anyone. Calls are short and synchronous (SQLite in WAL mode answers
in microseconds), made from the Trio thread only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import BadRequest, NameTaken, VmNotFound
from .models import Event, EventType, Vm, VmState

__all__ = ["IdempotencyRecord", "Store", "VmQuery", "fingerprint", "open_database", "utcnow"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vms (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS vms_state ON vms(state);
CREATE TABLE IF NOT EXISTS idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    vm_id TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    type TEXT NOT NULL,
    vm_id TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_vm ON events(vm_id, id);
"""

# Live facts that are reported with a VM but never stored.
_NOT_STORED = {"guest_agent"}


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class VmQuery:
    """Which VMs to list: every filter is optional; pages follow creation order."""

    states: tuple[VmState, ...] = ()
    name: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    limit: int = 100
    cursor: str | None = None
    tenant: str | None = None  # only this tenant's VMs (None: every tenant's)


@dataclass(frozen=True)
class IdempotencyRecord:
    fingerprint: str
    vm_id: str


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        kind, _, value = base64.urlsafe_b64decode(padded).decode().partition(":")
        if kind != "seq" or not value.isascii() or not value.isdigit() or len(value) > 18:
            raise ValueError(kind)
        return int(value)
    except (ValueError, UnicodeDecodeError) as err:
        raise BadRequest("cursor is not one this server handed out", cursor=cursor) from err


def open_database(path: Path, schema: str) -> sqlite3.Connection:
    """The server's way of opening an SQLite file (this store, the keys and audit
    log): autocommit, WAL (NORMAL sync keeps it consistent), a short wait for a lock
    another process holds (``hypermachine key`` next to a running server), then
    ``schema`` (idempotent ``CREATE … IF NOT EXISTS``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=5000")
    db.executescript(schema)
    return db


class Store:
    """VM documents, idempotency keys and the event log."""

    def __init__(self, path: Path) -> None:
        self._db = open_database(path, _SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- VMs -----------------------------------------------------------------

    def insert_vm(self, vm: Vm) -> None:
        """Raises NameTaken when another VM has the name."""
        try:
            self._db.execute(
                "INSERT INTO vms(id, name, state, doc) VALUES (?, ?, ?, ?)",
                (vm.id, vm.name, vm.state.value, vm.model_dump_json(exclude=_NOT_STORED)),
            )
        except sqlite3.IntegrityError as err:
            raise NameTaken(f"a VM named {vm.name!r} already exists", name=vm.name) from err

    def get_vm(self, vm_id: str) -> Vm:
        row = self._db.execute("SELECT doc FROM vms WHERE id = ?", (vm_id,)).fetchone()
        if row is None:
            raise VmNotFound(f"no VM with id {vm_id!r}", id=vm_id)
        return Vm.model_validate_json(row[0])

    def update_vm(self, vm_id: str, **changes: Any) -> Vm:
        """Apply ``changes`` to the stored document and stamp ``updated_at``."""
        return self.apply(self.get_vm(vm_id), **changes)

    def apply(self, current: Vm, **changes: Any) -> Vm:
        """Like :meth:`update_vm`, for a caller that has just read ``current``."""
        vm = current.model_copy(update={**changes, "updated_at": utcnow()})
        self._db.execute(
            "UPDATE vms SET state = ?, doc = ? WHERE id = ?",
            (vm.state.value, vm.model_dump_json(exclude=_NOT_STORED), vm.id),
        )
        return vm

    def delete_vm(self, vm_id: str) -> None:
        self._db.execute("DELETE FROM vms WHERE id = ?", (vm_id,))
        self._db.execute("DELETE FROM idempotency WHERE vm_id = ?", (vm_id,))

    def all_vms(self) -> Iterator[Vm]:
        for (doc,) in self._db.execute("SELECT doc FROM vms ORDER BY seq").fetchall():
            yield Vm.model_validate_json(doc)

    def list_vms(self, query: VmQuery) -> tuple[list[Vm], str | None]:
        """One page of VMs in creation order, and the cursor of the next page."""
        rows, cursor = self.list_vm_docs(query)
        return [Vm.model_validate_json(doc) for _, doc in rows], cursor

    def list_vm_docs(self, query: VmQuery) -> tuple[list[tuple[str, str]], str | None]:
        """Like :meth:`list_vms` but ``(id, stored JSON document)`` pairs as they are
        (no parsing), for the API's hot listing path."""
        where: list[str] = ["1=1"]
        params: list[object] = []
        if query.cursor:
            where.append("seq > ?")
            params.append(_decode_cursor(query.cursor))
        if query.states:
            where.append(f"state IN ({','.join('?' * len(query.states))})")
            params.extend(s.value for s in query.states)
        if query.tenant is not None:
            where.append("COALESCE(json_extract(doc, '$.tenant'), 'default') = ?")
            params.append(query.tenant)
        if query.name:
            where.append("name = ?")
            params.append(query.name)
        for key, value in query.labels.items():
            where.append(
                "EXISTS (SELECT 1 FROM json_each(vms.doc, '$.labels') WHERE key = ? AND value = ?)"
            )
            params.extend((key, value))
        rows = self._db.execute(
            f"SELECT seq, id, doc FROM vms WHERE {' AND '.join(where)} ORDER BY seq LIMIT ?",
            (*params, query.limit + 1),
        ).fetchall()
        limit = query.limit
        next_cursor = _encode_cursor(rows[limit - 1][0]) if len(rows) > limit else None
        return [(vm_id, doc) for _, vm_id, doc in rows[:limit]], next_cursor

    # -- idempotency ---------------------------------------------------------

    def get_idempotency(self, key: str, *, max_age_s: float) -> IdempotencyRecord | None:
        now = utcnow().timestamp()
        self._db.execute("DELETE FROM idempotency WHERE created < ?", (now - max_age_s,))
        row = self._db.execute(
            "SELECT fingerprint, vm_id FROM idempotency WHERE key = ?", (key,)
        ).fetchone()
        return IdempotencyRecord(row[0], row[1]) if row else None

    def put_idempotency(self, key: str, fingerprint: str, vm_id: str) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO idempotency(key, fingerprint, vm_id, created) VALUES (?,?,?,?)",
            (key, fingerprint, vm_id, utcnow().timestamp()),
        )

    # -- events --------------------------------------------------------------

    def append_event(self, type_: EventType, vm_id: str | None, data: Mapping[str, Any]) -> Event:
        """Write one event; its id is larger than every id before it."""
        time = utcnow()
        cursor = self._db.execute(
            "INSERT INTO events(time, type, vm_id, data) VALUES (?, ?, ?, ?)",
            (time.isoformat(), type_.value, vm_id, json.dumps(dict(data))),
        )
        assert cursor.lastrowid is not None
        return Event(id=cursor.lastrowid, time=time, type=type_, vm_id=vm_id, data=dict(data))

    def events_after(
        self, after: int, *, vm_id: str | None = None, limit: int = 500
    ) -> list[Event]:
        where, params = "id > ?", list[object]([after])
        if vm_id is not None:
            where += " AND vm_id = ?"
            params.append(vm_id)
        rows = self._db.execute(
            f"SELECT id, time, type, vm_id, data FROM events WHERE {where} ORDER BY id LIMIT ?",
            (*params, limit),
        ).fetchall()
        return [
            Event(id=r[0], time=r[1], type=EventType(r[2]), vm_id=r[3], data=json.loads(r[4]))
            for r in rows
        ]

    def last_event_id(self) -> int:
        return int(self._db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0])

    def prune_events(self, keep: int) -> None:
        """Drop all but the newest ``keep`` events."""
        self._db.execute("DELETE FROM events WHERE id <= ?", (self.last_event_id() - keep,))


def fingerprint(body: Mapping[str, Any]) -> str:
    """A stable digest of a request body, to tell a retry from a different request."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
