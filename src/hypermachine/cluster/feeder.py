"""Feeding this node's watchdog (:mod:`hypermachine.watchdog`) its fencing deadline.

The membership calls :meth:`WatchdogFeeder.arm` after each registration and renewal
that succeeded; it only records the deadline, so it never holds up the lease's
keep-alive. :meth:`WatchdogFeeder.run`, a task of the server, delivers the newest one
over the watchdog's socket, starting a watchdog first when none listens, and on any
failure drops the connection and tries again (a new connection, a new watchdog if
the old one is gone) until it gets through or a newer deadline replaces it.
Failures are logged; the server's own fencing does not rely on the watchdog.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import trio

from ..watchdog import ALREADY_GUARDED, SOCKET_NAME, command

__all__ = ["WatchdogFeeder"]

log = logging.getLogger(__name__)

_ANSWER_S = 5.0  # the watchdog answers at once; longer means it is stuck
_RETRY_S = 0.5
_RETRY_MAX_S = 8.0
_SPAWN_S = 30.0  # the watchdog's start: a Python interpreter on a busy host
_LEAVING_S = 10.0  # the last delivery, as the server shuts down


class _Refused(Exception):
    """The watchdog did not take a deadline (its answer is the message)."""


class WatchdogFeeder:
    """Keeps this node's watchdog fed with the moment the node fences itself."""

    def __init__(self, runtime_dir: Path) -> None:
        self._runtime_dir = runtime_dir
        self._latest: float | None = None  # on the monotonic clock, as the watchdog takes it
        self._delivered: float | None = None
        self._wake = trio.Event()
        self._stream: trio.SocketStream | None = None
        self._failing = False

    def arm(self, deadline: float) -> None:
        """Have the watchdog kill this node's QEMUs at ``deadline`` (Trio's clock)
        unless armed again before; delivered by :meth:`run`."""
        self._latest = time.monotonic() + (deadline - trio.current_time())
        self._wake.set()

    async def run(self) -> None:
        """Deliver each new deadline until cancelled."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            delay = _RETRY_S
            while self._latest != self._delivered:
                if not await self._deliver():  # each try may start a Python: back off
                    await trio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX_S)

    async def aclose(self) -> None:
        """Deliver a deadline not delivered yet (the last one, as the server leaves)
        and close the connection; the watchdog lives on."""
        with trio.CancelScope(shield=True):
            with trio.move_on_after(_LEAVING_S):
                if self._latest != self._delivered:
                    await self._deliver()
            await self._drop()

    async def _deliver(self) -> bool:
        """Send the newest deadline; whether the watchdog took it. A connection used
        before may have gone with its watchdog (it fenced and exited): then once more
        on a new one."""
        while True:
            reused = self._stream is not None
            try:
                with trio.fail_after(_SPAWN_S + _ANSWER_S):
                    deadline = await self._send_latest()
                break
            except (OSError, trio.BrokenResourceError, trio.TooSlowError, _Refused) as err:
                await self._drop()
                if not reused:
                    if not self._failing:
                        log.error("the watchdog of %s was not fed: %r", self._runtime_dir, err)
                    self._failing = True
                    return False
        if self._failing:
            log.warning("the watchdog of %s is fed again", self._runtime_dir)
        self._failing = False
        self._delivered = deadline
        return True

    async def _send_latest(self) -> float | None:
        """Connect if need be, then send the newest deadline (read once connected:
        starting a watchdog takes a while, and meanwhile a renewal may move it)."""
        if self._stream is None:
            self._stream = await self._connect()
        deadline = self._latest
        if deadline is not None:
            await self._send(self._stream, deadline)
        return deadline

    async def _send(self, stream: trio.SocketStream, deadline: float) -> None:
        await stream.send_all(f"{deadline:.6f}\n".encode())
        answer = b""
        with trio.fail_after(_ANSWER_S):
            while not answer.endswith(b"\n"):
                data = await stream.receive_some(256)
                if not data or len(answer) > 256:
                    raise _Refused(f"no answer ({answer!r})")
                answer += data
        if not answer.startswith(b"armed "):
            raise _Refused(answer.decode(errors="replace").strip())

    async def _connect(self) -> trio.SocketStream:
        path = str(self._runtime_dir / SOCKET_NAME)
        try:
            return await trio.open_unix_socket(path)
        except (FileNotFoundError, ConnectionRefusedError):
            pass  # no watchdog listens (none yet, or it fenced and exited)
        await self._spawn()
        return await trio.open_unix_socket(path)

    async def _spawn(self) -> None:
        done = await trio.run_process(
            command(self._runtime_dir),
            check=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            capture_stderr=True,
            start_new_session=True,  # not in the server's process group: it outlives it
        )
        if done.returncode not in (0, ALREADY_GUARDED):
            why = done.stderr.decode(errors="replace").strip()
            raise OSError(f"the watchdog did not start (exit {done.returncode}): {why}")
        if done.returncode == 0:
            log.info("started the watchdog of %s", self._runtime_dir)

    async def _drop(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.aclose()
