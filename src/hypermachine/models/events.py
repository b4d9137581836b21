"""The event log: what happened to a VM, typed."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import Field

from .base import _Strict

__all__ = ["Event", "EventType"]


class EventType(StrEnum):
    VM_CREATED = "vm.created"
    VM_DELETED = "vm.deleted"
    VM_STATE_CHANGED = "vm.state_changed"
    QEMU_EXITED = "vm.qemu_exited"
    GUEST_PANICKED = "vm.guest_panicked"
    VM_FAULT = "vm.fault"
    GUEST_AGENT_CONNECTED = "guest_agent.connected"
    GUEST_AGENT_DISCONNECTED = "guest_agent.disconnected"
    SNAPSHOT_STEP = "vm.snapshot"
    MIGRATION_STEP = "vm.migration"
    VM_TAKEN_OVER = "vm.taken_over"


class Event(_Strict):
    """One entry of the event log; ``id`` grows monotonically."""

    id: int
    time: datetime
    type: EventType
    vm_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)
