"""qemu-ga over its virtio-serial socket, spoken natively from Trio.

The wire format is newline-delimited JSON with no greeting. Two things make it
different from QMP (and why ``qemu.qmp`` cannot be used, see qemu-notes §8):

* replies left over from an earlier connection, or written while the agent was
  restarting, can arrive at any time. So every (re)connect starts with
  ``guest-sync-delimited``: we send ``0xFF`` (which resets the agent's parser)
  and the request; the agent answers ``0xFF{"return": N}``. Everything before
  the ``0xFF`` is discarded and the reply must carry our ``N``.
* every later command carries an ``id`` that the agent echoes, so a late reply
  to a command we gave up on is recognised and skipped.

Whatever the guest writes is checked at one seam (``agent_protocol.py``): a line
longer than ``max_line_bytes``, nested too deep, not a reply object, or a
``return`` that does not fit the command's model is an :class:`AgentProtocolError`.
That marks the agent unavailable with the reason (the caller gets
``GuestAgentUnavailable`` saying so) and the upkeep task resyncs; it never
raises out of the VM's tasks.

:class:`GuestAgent` is one VM's agent: its :meth:`~GuestAgent.run` task lives in
the VM's supervisor nursery (it ends when QEMU does), keeps the connection,
syncs until the agent answers, pings it, and resyncs when it stops answering
(a guest that restarts its agent). Commands are serialized per VM by a lock.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import trio

from ...errors import GuestAgentUnavailable
from ...models import GuestAgentInfo
from .agent_protocol import AgentInfo, AgentProtocolError, Done, decode_reply, returned

__all__ = ["AgentProtocolError", "AgentRefused", "AgentTiming", "GuestAgent"]

log = logging.getLogger(__name__)

_DELIMITER = 0xFF
_SYNC_BACKOFF_MAX_S = 10.0
_FIRST_CONNECT_RETRY_S = 0.02
_VERSION_AFTER_S = 0.5
T = TypeVar("T")


class AgentGone(Exception):
    """The socket closed or broke (QEMU is exiting or the channel was reset)."""


class _Untrusted(AgentGone):
    """The channel carried garbage: it cannot be trusted until the next sync."""

    def __init__(self, err: AgentProtocolError) -> None:
        super().__init__(f"the guest agent sent {err}")


class AgentRefused(Exception):
    """The agent answered with an error."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"{command}: {desc}")
        self.command, self.error_class, self.desc = command, error_class, desc


@dataclass(frozen=True)
class AgentTiming:
    """The named budgets (from Settings) of every wait on the agent, and its line limit."""

    sync_timeout_s: float
    command_timeout_s: float
    ping_interval_s: float
    retry_s: float
    max_line_bytes: int


class _Channel:
    """Newline-delimited JSON over one stream; one command in flight at a time."""

    def __init__(self, stream: trio.abc.Stream, max_line: int) -> None:
        self._stream = stream
        self._max_line = max_line
        self._buffer = bytearray()

    async def _send(self, message: dict[str, Any], *, delimit: bool = False) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        try:
            await self._stream.send_all(bytes([_DELIMITER]) + data if delimit else data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as err:
            raise AgentGone(str(err)) from err

    async def _fill(self) -> None:
        try:
            chunk = await self._stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as err:
            raise AgentGone(str(err)) from err
        if not chunk:
            raise AgentGone("the guest agent channel closed")
        self._buffer += chunk

    async def _line(self) -> bytes:
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > self._max_line:
                self._buffer.clear()
                raise _Untrusted(AgentProtocolError(f"a line longer than {self._max_line} bytes"))
            await self._fill()
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line

    async def sync(self, sync_id: int) -> None:
        """Resynchronise: returns once the agent answered this very ``sync_id``."""
        request = {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}
        await self._send(request, delimit=True)
        while True:
            while (start := self._buffer.find(bytes([_DELIMITER]))) < 0:
                self._buffer.clear()  # nothing before a delimiter is ours
                await self._fill()
            del self._buffer[: start + 1]
            line = (await self._line()).lstrip(bytes([_DELIMITER]))
            with contextlib.suppress(AgentProtocolError):  # not ours: skip it
                reply = decode_reply(line)
                if reply.value == sync_id and type(reply.value) is int:
                    return

    async def call(
        self, msg_id: int, command: str, arguments: dict[str, Any] | None, reply: type[T]
    ) -> T:
        """Send ``command`` and return its reply as ``reply``.

        Raises:
            AgentRefused: the agent answered with an error.
            AgentGone: the channel broke, or carried garbage (``_Untrusted``).
        """
        request: dict[str, Any] = {"execute": command, "id": msg_id}
        if arguments:
            request["arguments"] = arguments
        await self._send(request)
        while True:
            try:
                answer = decode_reply(await self._line())
                if answer.id != msg_id:
                    continue  # a stale reply to something we gave up on
                if answer.error_class is not None:
                    raise AgentRefused(command, answer.error_class, answer.error_desc)
                return returned(reply, answer.value, command)
            except AgentProtocolError as err:
                raise _Untrusted(err) from err


class GuestAgent:
    """One VM's guest agent: connection upkeep, status, and serialized commands."""

    def __init__(
        self,
        vm_id: str,
        socket_path: Path,
        timing: AgentTiming,
        on_change: Callable[[GuestAgent, str | None], None],
    ) -> None:
        self.vm_id = vm_id
        self.info = GuestAgentInfo()
        self._path = socket_path
        self._timing = timing
        self._on_change = on_change  # (agent, reason for a disconnect or None)
        self._channel: _Channel | None = None
        self._lock = trio.Lock()
        self._ids = itertools.count(random.randrange(1, 1 << 30))
        self._trouble = trio.Event()
        self._nursery: trio.Nursery | None = None

    @property
    def connected(self) -> bool:
        return self.info.connected

    # -- upkeep (the companion task) ----------------------------------------------

    async def run(self) -> None:
        """Keep the agent connected until cancelled (the VM's supervisor ends)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._connect_forever()
        finally:
            self._nursery = None
            self._set_disconnected("the VM stopped")

    async def _connect_forever(self) -> None:
        # QEMU makes the socket a moment after it starts: retry quickly at first (a
        # resumed guest answers at once), then every retry_s.
        delay = _FIRST_CONNECT_RETRY_S
        while True:
            try:
                stream = await trio.open_unix_socket(str(self._path))
            except OSError:
                await trio.sleep(delay)
                delay = min(delay * 2, self._timing.retry_s)
                continue
            delay = _FIRST_CONNECT_RETRY_S
            async with stream:
                reason = "the guest agent channel closed"
                try:
                    await self._session(_Channel(stream, self._timing.max_line_bytes))
                except _Untrusted as err:
                    reason = str(err)
                    self._set_disconnected(reason, violation=True)
                except AgentGone as err:
                    log.debug("%s: guest agent channel lost: %s", self.vm_id, err)
                finally:
                    self._set_disconnected(reason)
            await trio.sleep(self._timing.retry_s)

    async def _session(self, channel: _Channel) -> None:
        while True:
            await self._sync_until_answered(channel)
            self._set_connected(channel)  # an answered sync is an agent: commands may go
            await self._keep_alive(channel)
            self._set_disconnected("the guest agent stopped answering")

    async def _sync_until_answered(self, channel: _Channel) -> None:
        wait = self._timing.sync_timeout_s
        while True:
            async with self._lock:
                with trio.move_on_after(wait):
                    await channel.sync(next(self._ids))
                    return
            wait = min(wait * 2, _SYNC_BACKOFF_MAX_S)

    async def _keep_alive(self, channel: _Channel) -> None:
        """Ask qemu-ga's version, then ping it; return when it stops answering (or a
        command timed out). The version is asked ``_VERSION_AFTER_S`` after the sync,
        so it never stands in front of a first command that was waiting for the agent
        (a restored guest answers ``guest-info`` in 15-40 ms under TCG)."""
        if not await self._answered_after(_VERSION_AFTER_S, partial(self._learn_version, channel)):
            return
        ping = partial(self._ping, channel)
        while await self._answered_after(self._timing.ping_interval_s, ping):
            pass

    async def _answered_after(self, wait_s: float, request: Callable[[], Awaitable[None]]) -> bool:
        """After ``wait_s`` (cut short by trouble), ``request`` under the lock; False on
        trouble, or when it got no answer in time."""
        with trio.move_on_after(wait_s):
            await self._trouble.wait()
        if self._trouble.is_set():
            self._trouble = trio.Event()
            return False
        async with self._lock:
            with trio.move_on_after(self._timing.command_timeout_s):
                await request()
                return True
        return False

    async def _ping(self, channel: _Channel) -> None:
        await channel.call(next(self._ids), "guest-ping", None, Done)

    async def _learn_version(self, channel: _Channel) -> None:
        with contextlib.suppress(AgentRefused):  # a guest may block guest-info: no version
            info = await channel.call(next(self._ids), "guest-info", None, AgentInfo)
            self.info = self.info.model_copy(update={"version": info.version})

    def session_lost(self, reason: str) -> None:
        """The agent's session is gone (the guest was reset): disconnected now, and the
        upkeep resyncs the channel with whatever agent the guest starts next."""
        if self._channel is not None:
            self._trouble.set()
            self._set_disconnected(reason)

    def _set_connected(self, channel: _Channel) -> None:
        self._channel = channel
        self._trouble = trio.Event()  # trouble from before this sync is past
        self.info = GuestAgentInfo(connected=True, last_error=self.info.last_error)
        self._announce(None)

    def _set_disconnected(self, reason: str, *, violation: bool = False) -> None:
        """Record why the agent is not usable; announced when it was connected.

        While it stays disconnected the first reason is kept, unless this one is a
        protocol ``violation`` (garbage from the guest), which also becomes
        ``last_error`` and is kept across reconnects.
        """
        self._channel = None
        was_connected = self.info.connected
        update: dict[str, object] = {"connected": False}
        if was_connected or violation or self.info.reason is None:
            update["reason"] = reason
        if violation:
            update["last_error"] = reason
            log.warning("%s: %s", self.vm_id, reason)
        self.info = self.info.model_copy(update=update)
        if was_connected:
            self._announce(reason)

    def _announce(self, reason: str | None) -> None:
        self._on_change(self, reason)

    # -- use -----------------------------------------------------------------------

    async def call(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        reply: type[T],
        timeout_s: float = 0,
    ) -> T:
        """Run one agent command; its reply is checked against ``reply``.

        Raises:
            GuestAgentUnavailable: not connected, the channel broke, the agent sent
                garbage (the reason says what), or no reply in time.
            AgentRefused: the agent answered with an error.
        """
        timeout = timeout_s or self._timing.command_timeout_s
        channel = self._channel
        if channel is None:
            raise self.unavailable()
        async with self._lock:
            if self._channel is not channel:
                raise self.unavailable()
            try:
                with trio.fail_after(timeout):
                    return await channel.call(next(self._ids), command, arguments, reply)
            except trio.TooSlowError as err:
                self._trouble.set()
                self._set_disconnected("the guest agent stopped answering")
                raise GuestAgentUnavailable(
                    f"the guest agent did not answer {command} within {timeout:g} s",
                    vm_id=self.vm_id,
                ) from err
            except _Untrusted as err:
                self._trouble.set()  # the upkeep task resyncs the channel
                self._set_disconnected(str(err), violation=True)
                raise GuestAgentUnavailable(str(err), vm_id=self.vm_id) from err
            except AgentGone as err:
                self._trouble.set()  # the upkeep reconnects; until then nobody may use it
                self._set_disconnected(f"the guest agent channel broke: {err}")
                raise self.unavailable() from err

    def unavailable(self) -> GuestAgentUnavailable:
        return unavailable(self.vm_id, self.info.reason)

    def start_soon(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` as a task owned by this agent (cancelled when the VM stops)."""
        if self._nursery is None:
            raise self.unavailable()
        self._nursery.start_soon(fn)

    async def close_quietly(self, command: str, arguments: dict[str, Any]) -> None:
        """Best-effort cleanup command (e.g. closing a file handle), even when cancelled."""
        quiet = contextlib.suppress(GuestAgentUnavailable, AgentRefused)
        with trio.CancelScope(shield=True), quiet:
            await self.call(command, arguments, reply=Done, timeout_s=self._timing.sync_timeout_s)


def unavailable(vm_id: str, reason: str | None = None) -> GuestAgentUnavailable:
    """The error for a VM whose agent does not answer, with what we know of why."""
    why = f" ({reason})" if reason is not None else ""
    return GuestAgentUnavailable(
        f"no guest agent answers in this VM{why}: install and start qemu-guest-agent in the "
        "guest (virtio-serial port org.qemu.guest_agent.0), or pass ?wait_agent=SECONDS "
        "right after a boot",
        vm_id=vm_id,
    )
