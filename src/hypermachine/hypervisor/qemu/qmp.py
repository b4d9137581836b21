"""The Trio face of ``qemu.qmp``: the one module that touches asyncio.

``qemu.qmp`` is asyncio-only. Rather than patching asyncio for the whole process
(trio-asyncio), one asyncio loop runs in one thread and hosts every QMP client:

    bridge = QmpBridge()                       # starts the loop thread
    session = await bridge.connect(path, name="vm-1")
    await session.execute("query-status")      # awaits an asyncio future from Trio
    async for event in session.events: ...     # events arrive on a Trio channel,
                                               # which ends when the connection does
    await session.close()
    bridge.close()                             # stops the loop thread

A command's future wakes Trio through the Trio token (no worker thread is held
while QEMU answers); cancelling the Trio side cancels the asyncio future. Errors
are translated here: a failed command becomes :class:`HypervisorError`, a lost
connection :class:`QmpGone`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import trio
from qemu.qmp import (
    ConnectError,
    ExecInterruptedError,
    ExecuteError,
    Message,
    QMPClient,
    Runstate,
    StateError,
)
from qemu.qmp.error import QMPError

from ...errors import HypervisorError

__all__ = ["QmpBridge", "QmpGone", "QmpSession"]

T = TypeVar("T")
QmpEvent = dict[str, Any]

# Marker the bridge puts after the last event of a connection; never sent on.
_CLOSED = "HM-QMP-CLOSED"


class QmpGone(Exception):
    """The QMP connection is closed or could not be made (QEMU is gone or going)."""


class QmpBridge:
    """Owns the asyncio loop thread that every :class:`QmpSession` runs on."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="qmp-asyncio", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop thread and await its result from Trio."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        done = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def wake(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()

    async def connect(self, socket_path: Path, *, name: str) -> QmpSession:
        """Connect and negotiate; events flow from this moment on.

        Raises:
            QmpGone: nobody answers on ``socket_path`` or negotiation failed.
        """
        send, receive = trio.open_memory_channel[QmpEvent](math.inf)
        token = trio.lowlevel.current_trio_token()

        def forward(event: QmpEvent) -> None:
            if event.get("event") == _CLOSED:
                send.close()  # every event QEMU sent before closing has been delivered
                return
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                send.send_nowait(event)

        async def open_client() -> tuple[QMPClient, tuple[asyncio.Task[None], ...]]:
            client = QMPClient(name)
            await client.connect(str(socket_path))

            async def pump() -> None:
                async for message in client.events:
                    try:
                        token.run_sync_soon(forward, dict(message))
                    except trio.RunFinishedError:
                        return
                    if message.get("event") == _CLOSED:
                        return

            async def mark_close() -> None:
                # The reader queues events before it notices EOF, so a marker queued
                # after the disconnect comes after every event QEMU sent.
                while client.runstate == Runstate.RUNNING:
                    await client.runstate_changed()
                await client.events.put(Message({"event": _CLOSED}))

            loop = asyncio.get_running_loop()
            return client, (loop.create_task(pump()), loop.create_task(mark_close()))

        try:
            client, tasks = await self.run(open_client())
        except (ConnectError, QMPError, OSError, EOFError) as err:
            raise QmpGone(f"cannot connect QMP at {socket_path}: {err}") from err
        return QmpSession(self, client, tasks, receive)


class QmpSession:
    """One QMP connection to one QEMU."""

    def __init__(
        self,
        bridge: QmpBridge,
        client: QMPClient,
        tasks: tuple[asyncio.Task[None], ...],
        events: trio.MemoryReceiveChannel[QmpEvent],
    ) -> None:
        self._bridge = bridge
        self._client = client
        self._tasks = tasks  # the event pump and the close marker, on the loop thread
        self.events = events

    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one QMP command and return its ``return`` value.

        Raises:
            HypervisorError: QEMU answered with an error.
            QmpGone: the connection dropped before the answer.
        """
        return await self._call(command, self._client.execute(command, arguments))

    async def _call(self, command: str, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return await self._bridge.run(coro)
        except ExecuteError as err:
            raise HypervisorError(
                f"QEMU refused {command}: {err.error.error.desc}",
                qmp_command=command,
                qmp_error_class=err.error_class,
            ) from err
        except (ExecInterruptedError, StateError, EOFError, OSError, QMPError) as err:
            raise QmpGone(f"QMP connection lost during {command}: {err}") from err

    async def execute_with_fd(self, command: str, arguments: dict[str, Any], fd: int) -> None:
        """Run ``command`` with a copy of ``fd`` passed alongside (e.g. ``getfd`` for
        ``fd:NAME`` migration URIs). The descriptor and the command that names it travel
        together on the loop thread, so no other command can come between them.

        Raises:
            HypervisorError: QEMU refused the command or the descriptor.
            QmpGone: the connection dropped.
        """

        async def send() -> None:
            self._client.send_fd_scm(fd)
            await self._client.execute(command, arguments)

        await self._call(command, send())

    async def close(self) -> None:
        """Disconnect; QEMU keeps running. Safe to call twice."""

        async def shut() -> None:
            for task in self._tasks:
                task.cancel()
            # The peer may already be gone, which is what we wanted anyway.
            with contextlib.suppress(EOFError, OSError, QMPError):
                await self._client.disconnect()

        with trio.CancelScope(shield=True):
            await self._bridge.run(shut())
        self.events.close()
