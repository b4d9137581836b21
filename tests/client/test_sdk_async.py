"""``hypermachine.client.AsyncClient`` against the real server and guest, under Trio and asyncio."""

from __future__ import annotations

import anyio
import pytest

from clientlive import Live
from hypermachine.client import (
    AsyncClient,
    AsyncConsoleSession,
    ExecOutput,
    ExecResult,
    InvalidState,
    VmHandle,
    VmNotFound,
    VmState,
)

pytestmark = pytest.mark.qemu


async def _read_until(session: AsyncConsoleSession, marker: bytes) -> bytes:
    seen = b""
    with anyio.fail_after(30):
        while marker not in seen:
            seen += await session.receive()
    return seen


async def scenario(live: Live, name: str) -> None:
    """Every kind of call once: plain, streamed, bytes, websocket, errors, pages, events."""
    async with AsyncClient(live.url, live.key) as hm:
        vm = await hm.vms.get(name)
        assert vm.state is VmState.RUNNING
        result = await vm.exec(["sh", "-c", "read x; echo got $x; exit 4"], stdin="it\n")
        assert (result.exit_code, result.stdout) == (4, "got it\n")
        pieces = [p async for p in vm.exec_stream(["sh", "-c", "echo a; echo b >&2"])]
        assert isinstance(pieces[-1], ExecResult) and pieces[-1].exit_code == 0
        assert {(p.stream, p.text) for p in pieces if isinstance(p, ExecOutput)} == {
            ("stdout", "a\n"), ("stderr", "b\n"),
        }  # fmt: skip
        await vm.files.write("/tmp/async.bin", b"\x00async\xff")
        assert await vm.files.read("/tmp/async.bin") == b"\x00async\xff"
        async with vm.console() as session:
            await session.send('echo ASYNC-""CONSOLE\r')
            assert b"ASYNC-CONSOLE" in await _read_until(session, b"ASYNC-CONSOLE")
        assert (await vm.metrics()).vm_id == vm.id
        assert any("HM-READY" in line for line in await vm.logs(500))
        assert (await vm.script("vm.name")).result == name
        assert vm.id in [v.id async for v in hm.vms.list(state=["running"], page_size=1)]
        with pytest.raises(InvalidState):
            await vm.start()
        with pytest.raises(VmNotFound):
            await hm.vms.get("vm-000000000000")
        events = [e async for e in hm.events(after=0, follow=False)]
        assert any(e.vm_id == vm.id and e.type.value == "vm.created" for e in events)
        assert (await hm.host()).cpu_count >= 1


async def test_async_client_under_trio(live: Live, guest: VmHandle) -> None:
    await scenario(live, guest.name)


def test_async_client_under_asyncio(live: Live, guest: VmHandle) -> None:
    anyio.run(scenario, live, guest.name, backend="asyncio")
