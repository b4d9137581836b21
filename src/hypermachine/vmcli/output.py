"""What ``hypermachine vm …`` prints: tables for people, JSON for scripts, ids for ``-q``.

Colours come from rich, which leaves them out when stdout is not a terminal (and
honours ``NO_COLOR``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TypeVar

from pydantic import BaseModel
from rich.console import Console
from rich.filesize import decimal
from rich.markup import escape
from rich.table import Table

from ..errors import HMError
from ..models import Event, Snapshot, Vm, VmMetrics, VmState

__all__ = ["Output", "age", "memory"]

M = TypeVar("M", bound=BaseModel)

_STATE_STYLE = {
    VmState.RUNNING: "green",
    VmState.PAUSED: "yellow",
    VmState.ERROR: "bold red",
    VmState.STOPPED: "dim",
    VmState.DELETING: "dim",
}


def age(since: datetime, now: datetime | None = None) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``: how long ago, as ``kubectl get`` shows it."""
    seconds = max(0, int(((now or datetime.now(UTC)) - since).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def memory(mib: int) -> str:
    return f"{mib // 1024} GiB" if mib % 1024 == 0 else f"{mib} MiB"


def _ip(vm: Vm) -> str:
    ip = vm.network_info.ip if vm.network_info else None
    return ip.split("/")[0] if ip else "-"


def _state(state: VmState) -> str:
    style = _STATE_STYLE.get(state)
    return f"[{style}]{state.value}[/]" if style else state.value


class Output:
    """``fmt`` is ``table`` or ``json``; ``quiet`` prints ids only."""

    def __init__(self, fmt: str = "table", quiet: bool = False) -> None:
        self.json = fmt == "json"
        self.quiet = quiet
        self.out = Console(highlight=False, soft_wrap=True)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def _dump(self, data: object) -> None:
        self.out.out(json.dumps(data, indent=2), highlight=False)

    def model(self, model: BaseModel) -> None:
        self._dump(model.model_dump(mode="json"))

    def _listing(
        self, rows: list[M], ident: Callable[[M], str], table: Callable[[list[M]], Table]
    ) -> None:
        """A list: the table, a JSON array or (``-q``) one ``ident`` a line."""
        if self.json:
            self._dump([row.model_dump(mode="json") for row in rows])
        elif self.quiet:
            for row in rows:
                self.out.out(ident(row))
        else:
            self.out.print(table(rows))

    def vms(self, vms: Iterable[Vm]) -> None:
        self._listing(list(vms), lambda vm: vm.id, self._table)

    def vm(self, vm: Vm) -> None:
        """One VM: its JSON, its id, or a row of the table."""
        if self.json:
            self.model(vm)
        elif self.quiet:
            self.out.out(vm.id)
        else:
            self.out.print(self._table([vm]))

    def _table(self, vms: list[Vm]) -> Table:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("ID", "NAME", "STATE", "CPUS", "MEMORY", "IP", "AGE"):
            table.add_column(column, no_wrap=True)
        for vm in vms:
            table.add_row(
                vm.id, escape(vm.name), _state(vm.state), str(vm.cpus), memory(vm.memory_mb),
                _ip(vm), age(vm.created_at),
            )  # fmt: skip
        return table

    def snapshots(self, snapshots: Iterable[Snapshot]) -> None:
        """``-q``: their names."""
        self._listing(list(snapshots), lambda snapshot: snapshot.name, self._snapshot_table)

    def snapshot(self, snapshot: Snapshot) -> None:
        """One snapshot: its JSON, its name, or a row of the table."""
        if self.json:
            self.model(snapshot)
        else:
            self.snapshots([snapshot])

    @staticmethod
    def _snapshot_table(snapshots: list[Snapshot]) -> Table:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("NAME", "VM", "MEMORY", "SIZE", "VM STATE", "AGE"):
            table.add_column(column, no_wrap=True)
        for s in snapshots:
            size = decimal(s.size_bytes) if s.complete else "(writing)"
            table.add_row(
                escape(s.name), s.vm_id, "yes" if s.memory else "no", size, _state(s.vm_state),
                age(s.created_at),
            )  # fmt: skip
        return table

    def details(self, vm: Vm) -> None:
        """``vm get``: every field a person looks for, one a line."""
        if self.json or self.quiet:
            self.vm(vm)
            return
        reason = f" ({vm.state_reason})" if vm.state_reason else ""
        agent = vm.guest_agent.version or "connected" if vm.guest_agent.connected else "-"
        labels = ", ".join(f"{k}={v}" for k, v in vm.labels.items()) or "-"
        self._pairs(
            ("id", vm.id), ("name", vm.name), ("state", _state(vm.state) + escape(reason)),
            ("image", vm.image), ("cpus", str(vm.cpus)), ("memory", memory(vm.memory_mb)),
            ("disk", f"{vm.disk_gb} GiB"), ("network", vm.network.type), ("ip", _ip(vm)),
            ("labels", labels), ("guest agent", agent), ("created", f"{vm.created_at:%c}"),
            ("age", age(vm.created_at)),
        )  # fmt: skip

    def metrics(self, metrics: VmMetrics) -> None:
        if self.json:
            self.model(metrics)
            return
        mib = 1 << 20
        self._pairs(
            ("vcpus", str(metrics.vcpus)),
            ("cpu", f"{metrics.cpu_percent:.1f} %"),
            ("memory", f"{metrics.memory_rss_bytes / mib:.0f} MiB of "
                       f"{metrics.memory_configured_bytes / mib:.0f} MiB"),
            ("disk read", f"{metrics.disk_read_bytes / mib:.1f} MiB, {metrics.disk_read_ops} ops"),
            ("disk write",
             f"{metrics.disk_write_bytes / mib:.1f} MiB, {metrics.disk_write_ops} ops"),
            ("uptime", f"{metrics.uptime_seconds:.0f} s"),
        )  # fmt: skip

    def _pairs(self, *pairs: tuple[str, str]) -> None:
        table = Table(box=None, pad_edge=False, show_header=False)
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for key, value in pairs:
            table.add_row(key, value)
        self.out.print(table)

    def event(self, event: Event) -> None:
        """One event a line: JSON (one object a line) or time, type, VM and data."""
        if self.json:
            self.out.out(event.model_dump_json(), highlight=False)
            return
        data = " ".join(f"{k}={v}" for k, v in event.data.items())
        self.out.print(
            f"{event.id:>6} {event.time:%H:%M:%S} [bold]{event.type.value}[/] "
            f"{event.vm_id or '-'} {escape(data)}"
        )

    def line(self, text: str) -> None:
        """A plain line on stdout (no markup)."""
        self.out.out(text, highlight=False)

    def note(self, text: str) -> None:
        """A message for the person, on stderr."""
        self.err.print(text)

    def error(self, err: HMError) -> None:
        self.err.print(f"[bold red]error[/]: {err.code}: {escape(err.message)}")
        if err.details:
            self.err.out(json.dumps(err.details), highlight=False)
