"""The console log's rotation and tail, and the event log, on real files and real SQLite."""

from __future__ import annotations

import os
from pathlib import Path

import trio
import trio.testing

from hypermachine.events import EventLog
from hypermachine.hypervisor.guest.console import rotate_at_start, rotate_if_over, tail_lines
from hypermachine.models import EventType
from hypermachine.store import Store


def test_rotation_at_start_keeps_last_boot(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"boot one\n")
    rotate_at_start(log)
    assert not log.exists()
    assert (tmp_path / "console.log.1").read_bytes() == b"boot one\n"
    rotate_at_start(log)  # nothing to rotate: the previous boot stays
    assert (tmp_path / "console.log.1").read_bytes() == b"boot one\n"


def test_rotation_over_cap_loses_nothing_an_appender_wrote(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    # QEMU holds the log open with O_APPEND and never reopens it; so do we here.
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, b"".join(f"line {i}\n".encode() for i in range(1000)))
        assert not rotate_if_over(log, 1_000_000)
        assert rotate_if_over(log, 1000)
        os.write(fd, b"after rotation\n")  # lands at the start of the emptied log
    finally:
        os.close(fd)
    assert log.read_bytes() == b"after rotation\n"
    rotated = (tmp_path / "console.log.1").read_bytes()
    assert rotated.startswith(b"line 0\n") and rotated.endswith(b"line 999\n")
    assert tail_lines(log, 3, 1 << 20) == ["line 998", "line 999", "after rotation"]
    assert tail_lines(log, 0, 1 << 20) == []


async def test_event_log_follow_filter_and_resume(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    events = EventLog(store, retain=1000)
    first = events.record(EventType.VM_CREATED, "vm-a", name="a")
    events.record(EventType.VM_CREATED, "vm-b", name="b")
    seen: list[int] = []

    async def follow() -> None:
        async for event in events.follow(first.id - 1, vm_id="vm-a", idle_s=0.2):
            if event is None:
                continue  # a keep-alive tick
            seen.append(event.id)
            if event.type is EventType.VM_DELETED:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await trio.testing.wait_all_tasks_blocked()
        last = events.record(EventType.VM_DELETED, "vm-a")
    assert seen == [first.id, last.id]
    assert [e.id for e in events.after(first.id)] == [first.id + 1, last.id]
    store.prune_events(1)
    assert [e.id for e in events.after(0)] == [last.id]
    store.close()
