"""Prometheus metrics: server counters kept as they happen, VM figures read at scrape time.

Everything lives in registries owned by one :class:`Telemetry` (no global
``prometheus_client.REGISTRY``), so several servers or tests never share counts.
VM figures (state counts, CPU, memory, disk, network) are gathered when
``/metrics`` is scraped, into a fresh registry, and appended to the counters.
Each VM's figures are read on their own: one VM whose figures cannot be read
(stopped meanwhile, agent gone, or anything unexpected, which is logged) is left
out of that scrape, and every other VM is still reported.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import HMError
from .models import Event, InterfaceStats, Vm, VmMetrics, VmState
from .store import VmQuery

__all__ = ["CONTENT_TYPE", "Telemetry", "VmFigures"]

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LIVE = (VmState.RUNNING, VmState.PAUSED)


class _NetworkStats(Protocol):
    async def network_stats(self, vm_id: str) -> list[InterfaceStats]: ...


class VmFigures(Protocol):
    """Where a scrape reads VM figures from (the manager)."""

    @property
    def guest(self) -> _NetworkStats: ...
    def list(self, query: VmQuery = ...) -> tuple[list[Vm], str | None]: ...
    async def metrics(self, vm_id: str) -> VmMetrics: ...


class Telemetry:
    """The server's counters and histograms, and the scrape of VM figures."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self._requests = Counter(
            "hypermachine_api_requests", "API requests answered",
            ["method", "route", "status"], registry=reg,
        )  # fmt: skip
        self._latency = Histogram(
            "hypermachine_api_request_duration_seconds",
            "Time to answer an API request (to the first byte of a streamed answer)",
            ["method", "route"], registry=reg,
        )  # fmt: skip
        self._qmp = Histogram(
            "hypermachine_qmp_command_duration_seconds",
            "Round trip of QMP commands", ["command"], registry=reg,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip
        self._events = Counter(
            "hypermachine_events", "Events recorded, by type", ["type"], registry=reg
        )
        self._scripts = Counter(
            "hypermachine_script_runs", "Rhai script runs, by outcome", ["outcome"], registry=reg
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self._requests.labels(method, route, str(status)).inc()
        self._latency.labels(method, route).observe(seconds)

    def observe_qmp(self, command: str, seconds: float) -> None:
        self._qmp.labels(command).observe(seconds)

    def on_event(self, event: Event) -> None:
        self._events.labels(event.type.value).inc()

    def script_run(self, outcome: str) -> None:
        """For the script runner: ``ok``, ``syntax_error``, ``runtime_error``, ``limit``."""
        self._scripts.labels(outcome).inc()

    async def render(self, manager: VmFigures) -> bytes:
        snapshot = await _VmSnapshot.gather(manager)
        scraped = CollectorRegistry()
        scraped.register(snapshot)
        return generate_latest(self.registry) + generate_latest(scraped)


@dataclass(eq=False)  # registries key collectors by identity
class _VmSnapshot(Collector):
    """VM figures read once per scrape, exposed by :meth:`collect`."""

    vms: list[Vm] = field(default_factory=list)
    metrics: dict[str, VmMetrics] = field(default_factory=dict)
    network: dict[str, list[InterfaceStats]] = field(default_factory=dict)

    @classmethod
    async def gather(cls, manager: VmFigures) -> _VmSnapshot:
        snapshot = cls(vms=list(_all_vms(manager)))
        for vm in snapshot.vms:
            if vm.state not in _LIVE:
                continue
            try:
                snapshot.metrics[vm.id] = await manager.metrics(vm.id)
                if vm.guest_agent.connected and vm.state is VmState.RUNNING:
                    snapshot.network[vm.id] = await manager.guest.network_stats(vm.id)
            except HMError:
                continue  # the VM stopped or its agent left meanwhile: no figures for it
            except Exception:
                log.exception("%s: its figures are left out of this scrape", vm.id)
                snapshot.metrics.pop(vm.id, None)
        return snapshot

    def collect(self) -> Iterator[Metric]:
        yield self._counts()
        yield self._gauge("hypermachine_vm_up", "1 for each VM, labelled with its state", [
            (vm.id, 1.0, {"name": vm.name, "state": vm.state.value}) for vm in self.vms
        ])  # fmt: skip
        yield self._gauge("hypermachine_vm_guest_agent_connected", "1 when qemu-ga answers", [
            (vm.id, float(vm.guest_agent.connected), {}) for vm in self.vms
        ])  # fmt: skip
        yield self._per_vm(CounterMetricFamily, "cpu_seconds", "CPU time of the QEMU process")
        yield self._per_vm(GaugeMetricFamily, "memory_rss_bytes", "Resident memory of QEMU")
        yield self._per_vm(GaugeMetricFamily, "memory_configured_bytes", "Guest memory size")
        yield from self._disks()
        yield from self._network()

    def _per_vm(
        self, kind: type[GaugeMetricFamily] | type[CounterMetricFamily], what: str, doc: str
    ) -> Metric:
        source = "cpu_seconds_total" if what == "cpu_seconds" else what
        rows: list[tuple[str, float, dict[str, str]]] = [
            (i, float(getattr(m, source)), {}) for i, m in self.metrics.items()
        ]
        return _family(kind, f"hypermachine_vm_{what}", doc, rows)

    def _counts(self) -> Metric:
        family = GaugeMetricFamily("hypermachine_vms", "VMs by state", labels=["state"])
        for state in VmState:
            family.add_metric([state.value], sum(vm.state is state for vm in self.vms))
        return family

    @staticmethod
    def _gauge(name: str, doc: str, rows: Iterable[tuple[str, float, dict[str, str]]]) -> Metric:
        return _family(GaugeMetricFamily, name, doc, rows)

    @staticmethod
    def _counter(name: str, doc: str, rows: Iterable[tuple[str, float, dict[str, str]]]) -> Metric:
        return _family(CounterMetricFamily, name, doc, rows)

    def _disks(self) -> Iterator[Metric]:
        devices = [
            (vm_id, disk, {"device": disk.device})
            for vm_id, m in self.metrics.items()
            for disk in m.disk
        ]
        yield from self._counters("hypermachine_vm_disk", _DISK_FIGURES, devices)

    def _network(self) -> Iterator[Metric]:
        devices = [
            (vm_id, nic, {"interface": nic.name})
            for vm_id, nics in self.network.items()
            for nic in nics
        ]
        yield from self._counters("hypermachine_vm_network", _NETWORK_FIGURES, devices)

    def _counters(
        self,
        prefix: str,
        figures: tuple[tuple[str, str], ...],
        devices: Sequence[tuple[str, object, dict[str, str]]],
    ) -> Iterator[Metric]:
        """One counter per figure (an attribute of each device), a row per device."""
        for field_, doc in figures:
            rows = [(vm_id, float(getattr(dev, field_)), labels) for vm_id, dev, labels in devices]
            yield self._counter(f"{prefix}_{field_}", doc, rows)


_DISK_FIGURES = (
    ("read_bytes", "Bytes read from the disk"),
    ("write_bytes", "Bytes written to the disk"),
    ("read_ops", "Disk read operations"),
    ("write_ops", "Disk write operations"),
)
_NETWORK_FIGURES = (
    ("rx_bytes", "Bytes received by the guest interface (from qemu-ga)"),
    ("tx_bytes", "Bytes sent by the guest interface (from qemu-ga)"),
    ("rx_packets", "Packets received by the guest interface (from qemu-ga)"),
    ("tx_packets", "Packets sent by the guest interface (from qemu-ga)"),
)


def _family(
    kind: type[GaugeMetricFamily] | type[CounterMetricFamily],
    name: str,
    doc: str,
    rows: Iterable[tuple[str, float, dict[str, str]]],
) -> Metric:
    rows = list(rows)
    extra = sorted({key for _, _, labels in rows for key in labels})
    family = kind(name, doc, labels=["vm_id", *extra])
    for vm_id, value, labels in rows:
        family.add_metric([vm_id, *(labels.get(k, "") for k in extra)], value)
    return family


def _all_vms(manager: VmFigures) -> Iterator[Vm]:
    cursor: str | None = None
    while True:
        page, cursor = manager.list(VmQuery(limit=500, cursor=cursor))
        yield from page
        if cursor is None:
            return
