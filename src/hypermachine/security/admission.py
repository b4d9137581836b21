"""Admission before a VM starts: the tenant's VM quota and the host's budget; and the
tenant's storage quota (:func:`check_storage`). Pure.

The manager calls :func:`admit` between reading the live VMs and marking the new
one ``starting``, with no checkpoint in between, so two racing starts are decided
one after the other and cannot both squeeze past a limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InsufficientResources, QuotaExceeded
from ..models import Vm

__all__ = ["HostBudget", "admit", "check_storage"]


@dataclass(frozen=True)
class HostBudget:
    """What live VMs may use together, and the most vCPUs one VM may have."""

    memory_mb: int
    vcpus: int
    max_vcpus_per_vm: int


def _check_quota(vm: Vm, live: list[Vm], quota: int) -> None:
    if quota <= 0:
        return
    current = sum(1 for other in live if other.tenant == vm.tenant)
    if current >= quota:
        raise QuotaExceeded(
            f"tenant {vm.tenant!r} already has {current} live VMs; its tier allows {quota}",
            limit=quota,
            current=current,
        )


def _check_host(vm: Vm, live: list[Vm], budget: HostBudget) -> None:
    if vm.cpus > budget.max_vcpus_per_vm:
        raise InsufficientResources(
            f"a VM may have at most {budget.max_vcpus_per_vm} vCPUs on this host",
            requested_vcpus=vm.cpus,
            max_vcpus_per_vm=budget.max_vcpus_per_vm,
        )
    memory_free = budget.memory_mb - sum(other.memory_mb for other in live)
    vcpus_free = budget.vcpus - sum(other.cpus for other in live)
    if vm.memory_mb > memory_free or vm.cpus > vcpus_free:
        raise InsufficientResources(
            f"not enough host capacity: {vm.memory_mb} MiB / {vm.cpus} vCPUs requested, "
            f"{max(memory_free, 0)} MiB / {max(vcpus_free, 0)} vCPUs free",
            requested_memory_mb=vm.memory_mb,
            requested_vcpus=vm.cpus,
            free_memory_mb=max(memory_free, 0),
            free_vcpus=max(vcpus_free, 0),
            budget_memory_mb=budget.memory_mb,
            budget_vcpus=budget.vcpus,
        )


def admit(vm: Vm, live: Iterable[Vm], *, quota: int, budget: HostBudget) -> None:
    """Refuse to start ``vm`` when its tenant is at ``quota`` or the host is full.

    ``live`` are the VMs holding resources now (``vm`` itself is not among them).

    Raises:
        QuotaExceeded: the tenant already has ``quota`` live VMs (``quota`` 0: no limit).
        InsufficientResources: the host's memory or vCPU budget would be exceeded.
    """
    others = [other for other in live if other.id != vm.id]
    _check_quota(vm, others, quota)
    _check_host(vm, others, budget)


def check_storage(tenant: str, used_bytes: int, quota_bytes: int, *, where: str) -> None:
    """Refuse when ``tenant`` holds more than ``quota_bytes`` (0: no limit) ``where``
    (e.g. "on this host").

    Raises:
        QuotaExceeded: ``details.kind`` is ``storage``.
    """
    if 0 < quota_bytes < used_bytes:
        raise QuotaExceeded(
            f"tenant {tenant!r} holds {used_bytes // 2**20} MiB of disk {where}; its tier "
            f"allows {quota_bytes // 2**20} MiB",
            kind="storage",
            limit_bytes=quota_bytes,
            used_bytes=used_bytes,
        )
