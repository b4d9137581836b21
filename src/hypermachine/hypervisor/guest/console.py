"""The serial console: its captured log (tail, rotation) and interactive sessions.

QEMU writes the log itself (chardev ``logfile=``, opened ``O_APPEND``), even when
nobody is attached, and never reopens it. So:

* at VM start, before QEMU runs, a non-empty ``console.log`` becomes
  ``console.log.1`` (a rename: nothing is lost, each boot starts a fresh log);
* while the VM runs, a companion task checks the size every
  ``console_log_check_s``; over ``console_log_max_bytes`` it copies the log to
  ``console.log.1`` and truncates it. Because QEMU appends (``O_APPEND``), its
  next write lands at the new end; the copy loop catches up to the end of the
  file right before truncating, so only bytes written in that instant (between
  the last read and the truncate, microseconds) could be missed.

The interactive console is QEMU's serial socket; QEMU serves one client at a
time, so one session per VM is allowed and a second gets ``CONSOLE_BUSY``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import trio

from ...config import Settings
from ...errors import ConsoleBusy, InvalidState
from ...models import Vm, VmState
from ..vmfiles import nofollow
from ..vmfiles.layout import VmPaths

__all__ = ["ConsoleService", "rotate_at_start", "rotate_if_over", "tail_lines"]

_LIVE = (VmState.STARTING, VmState.RUNNING, VmState.PAUSED)


def _previous(log: Path) -> Path:
    return log.with_name(log.name + ".1")


def rotate_at_start(log: Path) -> None:
    """Move last boot's log aside (QEMU is not running, so nothing can be lost).

    A rename never follows a symlink: a planted one is moved aside like a log."""
    with nofollow.Folder(log.parent) as folder, contextlib.suppress(FileNotFoundError):
        if os.stat(log.name, dir_fd=folder.fd, follow_symlinks=False).st_size > 0:
            folder.replace(log.name, _previous(log).name)


def rotate_if_over(log: Path, max_bytes: int) -> bool:
    """Copy-and-truncate a log QEMU is appending to, once it is over ``max_bytes``.

    Only a regular file is rotated: a symlink planted in its place is neither read
    nor truncated (see :mod:`.nofollow`)."""
    partial = log.name + ".1.partial"
    with nofollow.Folder(log.parent) as folder:
        try:
            src = folder.open(log.name, os.O_RDWR)
        except (FileNotFoundError, nofollow.NotRegularFile):
            return False
        with src:
            if os.fstat(src.fileno()).st_size <= max_bytes:
                return False
            with folder.create(partial, 0o600) as dst:
                shutil.copyfileobj(src, dst)
                while chunk := src.read():  # catch up with what arrived during the copy
                    dst.write(chunk)
                src.truncate(0)
        folder.replace(partial, _previous(log).name)
    return True


def _tail_of(path: Path, lines: int, max_bytes: int) -> list[bytes]:
    try:
        with nofollow.Folder(path.parent) as folder, folder.open(path.name) as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except (FileNotFoundError, nofollow.NotRegularFile):
        return []  # no log, or not one the server will read
    parts = data.split(b"\n")
    if size > max_bytes:
        parts = parts[1:]  # the first one is cut
    if parts and parts[-1] == b"":
        parts.pop()
    return parts[-lines:] if lines else []


def tail_lines(log: Path, lines: int, max_bytes: int) -> list[str]:
    """The last ``lines`` lines of the console, reaching into the rotated file if needed."""
    found = _tail_of(log, lines, max_bytes)
    if len(found) < lines:
        found = _tail_of(_previous(log), lines - len(found), max_bytes) + found
    return [line.decode("utf-8", "replace").rstrip("\r") for line in found]


class ConsoleService:
    """Console logs and one interactive session per VM."""

    def __init__(
        self, settings: Settings, get_vm: Callable[[str], Vm], paths: Callable[[str], VmPaths]
    ) -> None:
        self._settings = settings
        self._get_vm = get_vm
        self._paths = paths
        self._sessions: set[str] = set()

    def log(self, vm_id: str, lines: int) -> list[str]:
        """Raises: VmNotFound."""
        self._get_vm(vm_id)
        return tail_lines(
            self._paths(vm_id).console_log, lines, self._settings.console_log_max_bytes * 2
        )

    async def keep_rotated(self, log: Path) -> None:
        """A VM's companion task: cap its console log while QEMU runs."""
        while True:
            await trio.sleep(self._settings.console_log_check_s)
            await trio.to_thread.run_sync(rotate_if_over, log, self._settings.console_log_max_bytes)

    async def open(self, vm_id: str) -> trio.SocketStream:
        """Connect to the VM's serial port and hold it until :meth:`release`.

        Raises:
            VmNotFound, InvalidState (no QEMU), ConsoleBusy.
        """
        vm = self._live_vm(vm_id)
        if vm_id in self._sessions:
            raise ConsoleBusy("another client holds this VM's console", vm_id=vm_id)
        self._sessions.add(vm_id)
        try:
            return await trio.open_unix_socket(str(self._paths(vm_id).serial_socket))
        except OSError as err:
            self._sessions.discard(vm_id)
            raise InvalidState(
                "the VM's serial console is not open", current=vm.state.value
            ) from err
        except BaseException:
            self._sessions.discard(vm_id)
            raise

    async def open_display(self, vm_id: str) -> trio.SocketStream:
        """Connect to the VM's VNC server (any number of viewers may share it).

        Raises:
            VmNotFound, InvalidState (no QEMU, or a VM created without a display).
        """
        vm = self._live_vm(vm_id)
        if vm.display.type != "vnc":
            raise InvalidState("the VM was created without a display", current=vm.state.value)
        try:
            return await trio.open_unix_socket(str(self._paths(vm_id).vnc_socket))
        except OSError as err:
            raise InvalidState("the VM's display is not open", current=vm.state.value) from err

    def _live_vm(self, vm_id: str) -> Vm:
        vm = self._get_vm(vm_id)
        if vm.state not in _LIVE:
            raise InvalidState(
                f"the console needs a running VM; it is {vm.state.value}",
                current=vm.state.value,
                allowed=[s.value for s in _LIVE],
            )
        return vm

    def release(self, vm_id: str) -> None:
        self._sessions.discard(vm_id)

    @contextlib.asynccontextmanager
    async def session(self, vm_id: str) -> AsyncIterator[trio.SocketStream]:
        """The VM's serial port as a byte stream, held exclusively (see :meth:`open`)."""
        stream = await self.open(vm_id)
        try:
            async with stream:
                yield stream
        finally:
            self.release(vm_id)
