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
from typing import Any

import trio

from ..errors import HypervisorError, SnapshotRefused
from ..models import Vm
from . import layers
from .machine import Machine

__all__ = [
    "freeze_live",
    "freeze_stopped",
    "load_memory",
    "migration_blockers",
    "refuse_memory",
    "save_memory",
    "wait_migration",
]

_DISK_DEVICE = "vd0"
_FD_NAME = "hm-snapshot"
# query-migrate has no event without the `events` capability, and an incoming load runs
# before the VM's event follower: poll it in short steps under the operation's budget.
_POLL_S = 0.01


async def migration_blockers(machine: Machine) -> list[str]:
    """What QEMU says prevents saving this VM's RAM (empty: nothing)."""
    status = await machine.execute("query-migrate")
    reasons = status.get("blocked-reasons", []) if isinstance(status, dict) else []
    return [str(reason) for reason in reasons]


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


async def _top_node(machine: Machine) -> str:
    devices = await machine.execute("query-block")
    for device in devices if isinstance(devices, list) else []:
        if device.get("qdev") == _DISK_DEVICE or device.get("device") == _DISK_DEVICE:
            return str(device["inserted"]["node-name"])
        if str(device.get("qdev", "")).endswith(f"/{_DISK_DEVICE}/virtio-backend"):
            return str(device["inserted"]["node-name"])
    raise HypervisorError("QEMU reports no disk to snapshot", device=_DISK_DEVICE)


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
    node = await _top_node(machine)
    new = await layers.create_above(qemu_img, vm_dir, frozen)
    if owner is not None:
        os.chown(vm_dir / new, *owner)
    layers.point_top(vm_dir, new)
    overlay = new.removesuffix(".qcow2")
    await machine.execute(
        "blockdev-add",
        {
            "driver": "qcow2",
            "node-name": overlay,
            "file": {"driver": "file", "filename": str(vm_dir / new)},
            "backing": None,
        },
    )
    await machine.execute("blockdev-snapshot", {"node": node, "overlay": overlay})
    return frozen


async def wait_migration(machine: Machine, timeout_s: float) -> dict[str, Any]:
    """Wait for QEMU's migration stream (out or in) to complete; return query-migrate's
    last answer (total-time, downtime, ram... on the sending side).

    Raises:
        HypervisorError: it failed or was cancelled, or the budget ran out (then it is
            cancelled).
    """
    try:
        with trio.fail_after(timeout_s):
            while True:
                answer = await machine.execute("query-migrate")
                status: dict[str, Any] = answer if isinstance(answer, dict) else {}
                state = status.get("status")
                if state == "completed":
                    return status
                if state in ("failed", "cancelled"):
                    raise HypervisorError(
                        f"QEMU's migration stream {state}",
                        reason=str(status.get("error-desc", "")),
                    )
                await trio.sleep(_POLL_S)
    except trio.TooSlowError as err:
        with contextlib.suppress(HypervisorError):
            await machine.execute("migrate_cancel")
        raise HypervisorError(f"saving or loading RAM took longer than {timeout_s:g} s") from err


async def save_memory(
    machine: Machine, target: Path, *, bandwidth_mib_s: int, timeout_s: float
) -> None:
    """Write the paused VM's RAM and device state to ``target`` (QEMU ends ``postmigrate``;
    ``cont`` resumes it).

    Raises:
        HypervisorError: QEMU refused or failed, or the budget ran out.
    """
    await machine.execute(
        "migrate-set-parameters", {"max-bandwidth": bandwidth_mib_s * 1024 * 1024}
    )
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        await machine.send_fd(fd, _FD_NAME)
    finally:
        os.close(fd)  # QEMU holds its own copy
    await machine.execute("migrate", {"uri": f"fd:{_FD_NAME}"})
    await wait_migration(machine, timeout_s)
    with open(target, "rb") as f:
        os.fsync(f.fileno())


async def load_memory(machine: Machine, source: Path, *, timeout_s: float) -> None:
    """Load ``source`` into a QEMU started with ``-incoming defer``; it ends paused.

    Raises:
        HypervisorError: QEMU refused the stream or the budget ran out.
    """
    fd = os.open(source, os.O_RDONLY)
    try:
        await machine.send_fd(fd, _FD_NAME)
    finally:
        os.close(fd)
    await machine.execute("migrate-incoming", {"uri": f"fd:{_FD_NAME}"})
    await wait_migration(machine, timeout_s)
