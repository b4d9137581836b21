"""Typing into a live VM's serial console (its chardev socket) and reading the log.

The connection stays open while typing: QEMU feeds the UART from the socket as
the guest drains it and drops what is unread when the client leaves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

from hypermachine.api import Services
from hypermachine.hypervisor.vmfiles.layout import VmPaths
from support import wait_until

PROMPT = "hm-tiny# "


def vm_paths(services: Services, vm_id: str) -> VmPaths:
    settings = services.settings
    return VmPaths.for_vm(settings.vms_dir, settings.runtime_dir, vm_id)


def console_text(services: Services, vm_id: str) -> str:
    log = vm_paths(services, vm_id).console_log
    return log.read_bytes().decode(errors="replace") if log.exists() else ""


async def wait_console(services: Services, vm_id: str, text: str, timeout: float = 90) -> None:
    """Wait for ``text`` in the console log; on timeout, show the log's tail."""
    try:
        await wait_until(
            lambda: text in console_text(services, vm_id),
            timeout=timeout,
            what=f"{text!r} on {vm_id}'s console",
        )
    except AssertionError as err:
        tail = console_text(services, vm_id)[-1500:]
        raise AssertionError(f"{err}\n--- console tail ---\n{tail}") from None


class Console:
    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream

    async def type(self, line: str) -> None:
        await self._stream.send_all(line.encode() + b"\n")


@asynccontextmanager
async def console(services: Services, vm_id: str) -> AsyncIterator[Console]:
    """Connected once the guest's shell has printed its prompt (input before is lost)."""
    await wait_console(services, vm_id, PROMPT)
    path: Path = vm_paths(services, vm_id).serial_socket
    stream = await trio.open_unix_socket(str(path))
    async with stream, trio.open_nursery() as nursery:
        # Read what QEMU sends us, as a terminal would (the log file has it all).
        nursery.start_soon(_drain, stream)
        yield Console(stream)
        nursery.cancel_scope.cancel()


async def _drain(stream: trio.SocketStream) -> None:
    while await stream.receive_some(65536):
        pass
