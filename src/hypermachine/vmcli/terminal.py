"""``vm console VM``: the serial console in this terminal, raw, until Ctrl-] (or the VM stops).

Keys go to the guest as they are typed (the terminal is put in raw mode, so Ctrl-C
reaches the guest too); the guest's output is written as it comes. Ctrl-] (byte
0x1d, as in telnet) leaves. Runs on the async SDK: one task per direction.
"""

from __future__ import annotations

import argparse
import os
import sys
import termios
import tty
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from ..client import AsyncClient, AsyncConsoleSession, Client
from .output import Output

__all__ = ["ESCAPE", "console"]

ESCAPE = b"\x1d"  # Ctrl-]
_READ = 4096


@contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """The terminal on ``fd`` in raw mode (restored afterwards); nothing if it is no tty."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _guest_to_terminal(session: AsyncConsoleSession, fd: int) -> None:
    async for data in session:
        os.write(fd, data)


async def _terminal_to_guest(session: AsyncConsoleSession, fd: int) -> bool:
    """Forward keys until the escape key (True) or the end of input (False)."""
    while True:
        await anyio.wait_readable(fd)
        data = os.read(fd, _READ)
        if not data:
            return False
        typed, escape, _ = data.partition(ESCAPE)
        if typed:
            await session.send(typed)
        if escape:
            return True


async def _attach(hm: AsyncClient, vm_id: str, out: Output) -> str:
    vm = await hm.vms.get(vm_id)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    async with vm.console() as session:
        out.note(f"connected to {vm.name}'s serial console; leave with Ctrl-]")
        with raw_mode(stdin):
            async with anyio.create_task_group() as tasks:

                async def output() -> None:
                    await _guest_to_terminal(session, stdout)
                    tasks.cancel_scope.cancel()

                tasks.start_soon(output)
                left = await _terminal_to_guest(session, stdin)
                tasks.cancel_scope.cancel()
                return "left the console" if left else "end of input"
    return "the console closed (the VM stopped)"


def console(args: argparse.Namespace, hm: Client, out: Output) -> int:
    vm_id = hm.vms.get(args.vm).id

    async def main() -> str:
        async with AsyncClient(hm.server, hm.api_key) as client:
            return await _attach(client, vm_id, out)

    out.note(f"\r\n{anyio.run(main)}")
    return 0
