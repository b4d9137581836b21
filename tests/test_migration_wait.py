"""Waiting for a migration stream reads QEMU's ``query-migrate`` for the right side.

Measured on QEMU 7.2: a QEMU that once received a stream (a restored or migrated VM)
answers ``{"status": "completed"}`` for it until its own outgoing stream has begun;
taken for the outgoing stream, that ends the wait before a byte was sent (a snapshot
file still being written, a migration without figures).
"""

from __future__ import annotations

from typing import Any

from hypermachine.hypervisor.storage.snapshots import wait_migration

RECEIVED_BEFORE = {"status": "completed"}  # what a migrated VM's QEMU says before sending
SENT = {"status": "completed", "total-time": 16, "downtime": 5, "ram": {"transferred": 4096}}


class ScriptedQmp:
    """Answers ``query-migrate`` from a list, one answer per call."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = list(answers)
        self.asked = 0

    async def execute(self, command: str, arguments: object = None) -> dict[str, Any]:
        assert command == "query-migrate"
        self.asked += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


async def test_the_sending_side_waits_past_an_earlier_incoming_completion() -> None:
    qmp = ScriptedQmp([RECEIVED_BEFORE, {"status": "setup"},
                       {"status": "active", "total-time": 3}, SENT])  # fmt: skip
    status = await wait_migration(qmp, 10, sending=True)  # type: ignore[arg-type]
    assert (status.total_time_ms, status.downtime_ms, status.transferred_bytes) == (16, 5, 4096)
    assert qmp.asked == 4


async def test_the_receiving_side_ends_with_its_own_completion() -> None:
    qmp = ScriptedQmp([{"status": "active"}, RECEIVED_BEFORE])
    status = await wait_migration(qmp, 10, sending=False)  # type: ignore[arg-type]
    assert status.status == "completed" and qmp.asked == 2
