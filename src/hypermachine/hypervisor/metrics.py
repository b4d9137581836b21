"""A live VM's figures: CPU and memory from its QEMU process, disk I/O from QMP."""

from __future__ import annotations

import contextlib
import dataclasses

import psutil

from ..errors import InvalidState
from ..models import DiskStats, Vm, VmMetrics, VmState
from ..store import utcnow
from .qemu import qmp_commands
from .qemu.machine import Machine

__all__ = ["require_live", "vm_metrics"]


def require_live(vm: Vm) -> None:
    """Raises: InvalidState, unless ``vm`` is running or paused (a QEMU to ask)."""
    if vm.state not in (VmState.RUNNING, VmState.PAUSED):
        raise InvalidState(
            f"metrics need a running VM; it is {vm.state.value}",
            current=vm.state.value,
            allowed=["paused", "running"],
        )


async def vm_metrics(vm: Vm, machine: Machine) -> VmMetrics:
    """``vm``'s figures now, read from ``machine`` (its QEMU)."""
    disks = [
        DiskStats(**dataclasses.asdict(entry))
        for entry in await qmp_commands.query_blockstats(machine)
    ]
    cpu, rss, cpu_s = 0.0, 0, 0.0
    process = machine.process
    if process is not None:
        with contextlib.suppress(psutil.Error):
            cpu, rss = process.cpu_percent(None), process.memory_info().rss
            times = process.cpu_times()
            cpu_s = times.user + times.system
    started = vm.started_at or vm.updated_at
    return VmMetrics(
        vm_id=vm.id,
        vcpus=vm.cpus,
        cpu_percent=cpu,
        memory_rss_bytes=rss,
        memory_configured_bytes=vm.memory_mb * 1024 * 1024,
        disk=disks,
        disk_read_bytes=sum(d.read_bytes for d in disks),
        disk_write_bytes=sum(d.write_bytes for d in disks),
        disk_read_ops=sum(d.read_ops for d in disks),
        disk_write_ops=sum(d.write_ops for d in disks),
        uptime_seconds=max(0.0, (utcnow() - started).total_seconds()),
        cpu_seconds_total=cpu_s,
    )
