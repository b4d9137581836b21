"""The QEMU and file side of a live migration (docs/cluster.md); pure steps the
migration service composes.

* The stream runs over a socket pair the server makes and hands to both QEMUs with
  ``getfd`` (``fd:`` URIs): nothing listens on a path or a port. The destination
  QEMU was started ``-incoming defer`` with ``late-block-activate``, so it takes the
  disk's locks only when it is told to run (``cont``): until then the source can
  still go on, which is what makes a failed switch-over harmless.
* A destination QEMU lives in its own run dir, ``<vm id>.m<token>`` beside the VM's,
  since the source's sockets and pidfile hold the usual names. Once the source has
  exited (QEMU unlinks its listening sockets by their bound names as it exits) the
  two dirs are swapped in one ``renameat2(RENAME_EXCHANGE)``: the VM's run dir then
  holds the destination's sockets, which keep working under the new name.
* ``migration.committed`` in the destination's run dir marks the point after which
  the destination, not the source, is the VM (written before it runs); a server
  restarted mid-way finishes or undoes the migration by it (:func:`leftovers`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import HypervisorError
from ..models import Migration, Vm, VmState
from .qemu import qmp_commands
from .qemu.machine import Machine
from .storage.snapshots import wait_migration
from .vmfiles import nofollow
from .vmfiles.layout import VmPaths

__all__ = [
    "COMMITTED",
    "Figures",
    "clear_committed",
    "destination",
    "exchange",
    "finished",
    "is_committed",
    "leftovers",
    "mark_committed",
    "resume_source",
    "stream",
    "take_run_dir",
]

COMMITTED = "migration.committed"
_FD_NAME = "hm-migration"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@dataclass(frozen=True)
class Figures:
    """What the sending QEMU reports once the stream is complete (``query-migrate``)."""

    total_time_ms: int
    downtime_ms: int
    setup_time_ms: int
    transferred_bytes: int

    @classmethod
    def of(cls, status: qmp_commands.MigrationStatus) -> Figures:
        return cls(
            total_time_ms=status.total_time_ms,
            downtime_ms=status.downtime_ms,
            setup_time_ms=status.setup_time_ms,
            transferred_bytes=status.transferred_bytes,
        )


def finished(
    vm: Vm, figures: Figures, *, source_node: str, node: str, switchover_ms: float
) -> tuple[Migration, dict[str, object]]:
    """A completed migration's answer, and its ``completed`` event's data."""
    answer = Migration(
        vm=vm,
        source_node=source_node,
        node=node,
        total_time_ms=figures.total_time_ms,
        downtime_ms=figures.downtime_ms,
        setup_time_ms=figures.setup_time_ms,
        transferred_bytes=figures.transferred_bytes,
        switchover_ms=switchover_ms,
    )
    data: dict[str, object] = {
        "node": node, "source_node": source_node, "total_time_ms": figures.total_time_ms,
        "downtime_ms": figures.downtime_ms, "switchover_ms": round(switchover_ms, 1),
        "transferred_bytes": figures.transferred_bytes,
    }  # fmt: skip
    return answer, data


async def resume_source(source: Machine, vm: Vm) -> None:
    """A failed migration: stop sending, and let a guest that was running run on in
    its source QEMU (a completed stream left it paused; ``cont`` takes the disk back)."""
    if source.exited.is_set():
        return
    with contextlib.suppress(HypervisorError):
        await qmp_commands.migrate_cancel(source)
        status = await qmp_commands.query_status(source)
        if status.status == "postmigrate" and vm.state is VmState.RUNNING:
            await qmp_commands.cont(source)


def destination(paths: VmPaths, token: str) -> VmPaths:
    """Where a destination QEMU of the VM at ``paths`` keeps its sockets and pidfile."""
    run_dir = paths.run_dir.with_name(f"{paths.run_dir.name}.m{token}")
    return VmPaths(vm_dir=paths.vm_dir, run_dir=run_dir)


def leftovers(paths: VmPaths) -> list[VmPaths]:
    """The run dirs of destinations a migration of this VM left behind (a server restart)."""
    parent = paths.run_dir.parent
    return [
        VmPaths(vm_dir=paths.vm_dir, run_dir=found)
        for found in sorted(parent.glob(f"{paths.run_dir.name}.m*"))
        if found.is_dir() and not found.is_symlink()
    ]


def mark_committed(dest: VmPaths) -> None:
    nofollow.write_file(dest.run_dir / COMMITTED, b"")  # the QEMU user owns the run dir


def is_committed(dest: VmPaths) -> bool:
    with nofollow.Folder(dest.run_dir) as run_dir:
        try:
            return stat.S_ISREG(run_dir.lstat(COMMITTED).st_mode)
        except FileNotFoundError:
            return False


def clear_committed(paths: VmPaths) -> None:
    """Drop the marker once the destination's run dir is the VM's: left there, it would
    mark that dir committed again when a later migration swaps it out."""
    (paths.run_dir / COMMITTED).unlink(missing_ok=True)


def take_run_dir(dest: VmPaths, paths: VmPaths) -> None:
    """Give the VM's run dir name to the destination's (the source's QEMU is gone):
    swapped with the source's, or renamed when the source left none."""
    if paths.run_dir.exists():
        exchange(dest.run_dir, paths.run_dir)
    else:
        dest.run_dir.rename(paths.run_dir)


def exchange(a: Path, b: Path) -> None:
    """Swap two directories atomically (``renameat2`` with ``RENAME_EXCHANGE``).

    Raises:
        OSError: the kernel or the file system refused.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    done = libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if done != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), str(a), None, str(b))


async def stream(
    source: Machine, dest: Machine, *, bandwidth_mib_s: int, timeout_s: float
) -> Figures:
    """Send the source's RAM and device state to ``dest`` (started ``-incoming defer``)
    while the guest runs; returns once both ends are done: the source is then
    ``postmigrate`` (paused, its disk released), the destination paused with the disk
    not yet taken.

    Raises:
        HypervisorError: either QEMU refused or failed, or the budget ran out.
    """
    await qmp_commands.migrate_set_capabilities(dest, {"late-block-activate": True})
    await qmp_commands.migrate_set_bandwidth(source, bandwidth_mib_s * 1024 * 1024)
    outgoing, incoming = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await qmp_commands.getfd(dest, incoming.fileno(), _FD_NAME)
        await qmp_commands.getfd(source, outgoing.fileno(), _FD_NAME)
    finally:
        outgoing.close()  # each QEMU holds its own copy
        incoming.close()
    await qmp_commands.migrate_incoming(dest, _FD_NAME)
    await qmp_commands.migrate(source, _FD_NAME)
    sent = await wait_migration(source, timeout_s, sending=True)
    await wait_migration(dest, timeout_s, sending=False)
    return Figures.of(sent)
