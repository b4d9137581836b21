"""The QEMU side of snapshots: what blocks saving RAM, freezing the disk, saving and
loading RAM. QEMU 7.2 facts (docs/snapshots.md):

* RAM + device state is QEMU's migration stream written to a file descriptor handed
  over with ``getfd`` (``-sandbox spawn=deny`` forbids ``exec:``, 7.2 has no ``file:``);
  a restore starts QEMU with ``-incoming defer`` and runs ``migrate-incoming`` on the
  same kind of descriptor. The bandwidth cap is raised first (128 MiB/s by default).
* ``query-migrate``'s ``blocked-reasons`` are QEMU's own word on what cannot be saved
  (a VFIO device, ...); a VM with any is refused with them.
* The disk is frozen by putting a new empty layer on top of the one QEMU writes
  (``blockdev-add`` + ``blockdev-snapshot``: QEMU drains in-flight I/O and switches).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO

import trio

from ...errors import HypervisorError, SnapshotRefused
from ...models import NetworkInfo, Vm
from ..qemu import qmp_commands
from ..qemu.argv import DISK_DEVICE
from ..qemu.machine import Machine
from . import layers

__all__ = [
    "announces",
    "freeze_live",
    "freeze_stopped",
    "load_memory",
    "migration_blockers",
    "refuse_memory",
    "save_memory",
    "top_node",
    "wait_migration",
]

_FD_NAME = "hm-snapshot"
# query-migrate has no event without the `events` capability, and an incoming load runs
# before the VM's event follower: poll it in short steps under the operation's budget.
_POLL_S = 0.01


async def migration_blockers(machine: Machine) -> list[str]:
    """What QEMU says prevents saving this VM's RAM (empty: nothing)."""
    return list((await qmp_commands.query_migrate(machine)).blocked_reasons)


def refuse_memory(vm: Vm, blockers: list[str]) -> None:
    """Raise when ``vm``'s RAM must not or cannot be saved.

    Raises:
        SnapshotRefused: memory encryption (the host could read what SEV/TDX hides, and
            QEMU cannot load it back), or QEMU's migration blockers, quoted.
    """
    if vm.security.memory_encryption != "none":
        raise SnapshotRefused(
            "a confidential VM's memory is not saved: its encryption exists to keep it "
            "from the host, and QEMU cannot load it back",
            reasons=[f"memory_encryption {vm.security.memory_encryption}"],
        )
    if blockers:
        raise SnapshotRefused(
            f"QEMU cannot save this VM's memory: {'; '.join(blockers)}", reasons=blockers
        )


async def top_node(machine: Machine) -> str:
    """The block node the VM's disk device writes to (a snapshot puts new ones on top)."""
    for device in await qmp_commands.query_block(machine):
        ours = DISK_DEVICE in (device.qdev, device.device) or device.qdev.endswith(
            f"/{DISK_DEVICE}/virtio-backend"
        )
        if ours and device.node_name is not None:
            return device.node_name
    raise HypervisorError("QEMU reports no disk to snapshot", device=DISK_DEVICE)


async def freeze_stopped(qemu_img: str, vm_dir: Path) -> str:
    """A stopped VM: the top layer is frozen under a new one; returns the frozen name."""
    layers.settle_legacy(vm_dir)
    frozen = layers.current(vm_dir)
    layers.point_top(vm_dir, await layers.create_above(qemu_img, vm_dir, frozen))
    return frozen


async def freeze_live(
    machine: Machine, qemu_img: str, vm_dir: Path, owner: tuple[int, int] | None
) -> str:
    """A live VM: QEMU moves its writes to a new top layer; returns the frozen name.

    The link is switched before QEMU is: if the server dies between the two, the new
    layer is empty, so the chain under the link still holds every write.
    """
    layers.settle_legacy(vm_dir)
    frozen = layers.current(vm_dir)
    node = await top_node(machine)
    new = await layers.create_above(qemu_img, vm_dir, frozen, owner)
    layers.point_top(vm_dir, new)
    overlay = new.removesuffix(".qcow2")
    await qmp_commands.blockdev_add_qcow2(machine, overlay, str(vm_dir / new))
    await qmp_commands.blockdev_snapshot(machine, node, overlay)
    return frozen


async def wait_migration(
    machine: Machine, timeout_s: float, *, sending: bool
) -> qmp_commands.MigrationStatus:
    """Wait for QEMU's migration stream to complete (the one it is ``sending``, or the
    one it receives); its last status (with the times and bytes on the sending side).

    Raises:
        HypervisorError: it failed or was cancelled, or the budget ran out (then it is
            cancelled).
    """
    try:
        with trio.fail_after(timeout_s):
            while True:
                status = await qmp_commands.query_migrate(machine)
                # A QEMU that sent a stream before (a memory snapshot) reads "completed"
                # with a zero total time until the new stream has set up.
                if (
                    status.status == "completed"
                    and status.sending == sending
                    and (not sending or status.total_time_ms > 0)
                ):
                    return status
                if status.status in ("failed", "cancelled"):
                    raise HypervisorError(
                        f"QEMU's migration stream {status.status}", reason=status.error_desc
                    )
                await trio.sleep(_POLL_S)
    except trio.TooSlowError as err:
        with contextlib.suppress(HypervisorError):
            await qmp_commands.migrate_cancel(machine)
        raise HypervisorError(f"saving or loading RAM took longer than {timeout_s:g} s") from err


async def save_memory(
    machine: Machine, target: BinaryIO, *, bandwidth_mib_s: int, timeout_s: float
) -> None:
    """Write the paused VM's RAM and device state to ``target``, a fresh file the server
    opened (QEMU gets a copy of its descriptor; it ends ``postmigrate``, ``cont``
    resumes it).

    Raises:
        HypervisorError: QEMU refused or failed, or the budget ran out.
    """
    await qmp_commands.migrate_set_bandwidth(machine, bandwidth_mib_s * 1024 * 1024)
    await qmp_commands.getfd(machine, target.fileno(), _FD_NAME)
    await qmp_commands.migrate(machine, _FD_NAME)
    await wait_migration(machine, timeout_s, sending=True)
    os.fsync(target.fileno())


def announces(info: NetworkInfo | None) -> bool:
    """Whether a guest's NIC should announce itself once its RAM is loaded: not on NAT,
    where its only neighbour is its new passt, which learns the guest's MAC from its
    first frame (announcing would only cost the guest TCG time)."""
    return info is None or info.type != "nat"


async def load_memory(
    machine: Machine, source: BinaryIO, *, timeout_s: float, announce: bool = True
) -> None:
    """Load ``source`` (a RAM file the server opened) into a QEMU started with
    ``-incoming defer``; it ends paused. Without ``announce``, the guest's NIC does not
    announce its address once loaded.

    Raises:
        HypervisorError: QEMU refused the stream or the budget ran out.
    """
    if not announce:
        await qmp_commands.migrate_skip_announce(machine)
    await qmp_commands.getfd(machine, source.fileno(), _FD_NAME)
    await qmp_commands.migrate_incoming(machine, _FD_NAME)
    await wait_migration(machine, timeout_s, sending=False)
