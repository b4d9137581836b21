"""The event log: what happened to VMs, in order, persisted, and followed live.

Every event is written to SQLite first (so a client that reconnects with
``Last-Event-ID`` misses nothing the log still holds) and then announced to the
followers, which sleep on one broadcast :class:`trio.Event` and re-read the store.
There are no per-follower queues to overflow: a slow follower just reads more
rows on its next turn. Recording is synchronous so the manager can call it from
the one place where states change.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from .models import Event, EventType, Vm, VmState
from .store import Store

__all__ = ["EventLog"]

_BATCH = 500
_PRUNE_EVERY = 1000


class EventLog:
    """Append-only VM history with live followers."""

    def __init__(self, store: Store, *, retain: int) -> None:
        self._store = store
        self._retain = retain
        self._changed = trio.Event()
        self._since_prune = 0
        self._listeners: list[Callable[[Event], None]] = []

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener`` (synchronously, must not block) for every new event."""
        self._listeners.append(listener)

    def record(self, type_: EventType, vm_id: str | None, **data: Any) -> Event:
        event = self._store.append_event(type_, vm_id, data)
        self._since_prune += 1
        if self._since_prune >= _PRUNE_EVERY:
            self._store.prune_events(self._retain)
            self._since_prune = 0
        self._changed.set()
        self._changed = trio.Event()
        for listener in self._listeners:
            listener(event)
        return event

    # -- what the manager reports ------------------------------------------------

    def vm_created(self, vm: Vm) -> None:
        self.record(EventType.VM_CREATED, vm.id, name=vm.name, image=vm.image, state=vm.state)

    def vm_taken_over(self, vm: Vm, from_node: str, reason: str) -> None:
        """This node took the VM over from a node that went down (cluster.restart)."""
        self.record(EventType.VM_TAKEN_OVER, vm.id, from_node=from_node, reason=reason)

    def vm_deleted(self, vm_id: str) -> None:
        self.record(EventType.VM_DELETED, vm_id)

    def vm_fault(self, vm_id: str, part: str, reason: str) -> None:
        """A task of the VM failed and was contained (hypervisor/faults.py)."""
        self.record(EventType.VM_FAULT, vm_id, part=part, reason=reason)

    def state_changed(self, vm: Vm, previous: VmState | None) -> None:
        if previous is vm.state:
            return
        self.record(
            EventType.VM_STATE_CHANGED,
            vm.id,
            state=vm.state,
            previous=previous,
            reason=vm.state_reason,
        )

    def qemu_exited(
        self, vm_id: str, *, returncode: int | None, panicked: bool, shutdown_reason: str | None
    ) -> None:
        if panicked:
            self.record(EventType.GUEST_PANICKED, vm_id)
        self.record(
            EventType.QEMU_EXITED,
            vm_id,
            returncode=returncode,
            shutdown_reason=shutdown_reason,
        )

    # -- reading -----------------------------------------------------------------

    def latest_id(self) -> int:
        return self._store.last_event_id()

    def after(self, after: int, *, vm_id: str | None = None, limit: int = _BATCH) -> list[Event]:
        return self._store.events_after(after, vm_id=vm_id, limit=limit)

    async def follow(
        self, after: int, *, vm_id: str | None = None, idle_s: float = math.inf
    ) -> AsyncIterator[Event | None]:
        """Every event with an id above ``after`` (optionally of one VM), forever.

        Yields None after ``idle_s`` without news (for keep-alives).
        """
        while True:
            changed = self._changed
            batch = self.after(after, vm_id=vm_id)
            for event in batch:
                yield event
                after = event.id
            if len(batch) < _BATCH:
                with trio.move_on_after(idle_s):
                    await changed.wait()
                if not changed.is_set():
                    yield None
