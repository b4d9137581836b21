"""Rate limits per key, VM quotas per tenant, host admission."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
from keyed import Keyed, assert_error, keyed_server

from hypermachine.errors import InsufficientResources, QuotaExceeded
from hypermachine.models import Vm, VmState
from hypermachine.security.admission import HostBudget, admit
from hypermachine.security.ratelimit import SlidingWindowLimiter
from support import qemu_pids_for

VM = {"image": "tiny", "memory_mb": 512, "disk_gb": 1}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sliding_window_counts_exactly_and_slides() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(60.0, clock)
    decisions = []
    for _ in range(60):
        decisions.append(limiter.hit("k", 60))
        clock.now += 0.5  # 60 requests over 30 s
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions[:3]] == [59, 58, 57] and decisions[-1].remaining == 0
    refused = limiter.hit("k", 60)
    assert not refused.allowed and refused.remaining == 0
    assert refused.retry_after_s == 30 and refused.headers()["Retry-After"] == "30"
    assert limiter.hit("other", 60).allowed  # keys are independent
    clock.now += 29.9
    assert not limiter.hit("k", 60).allowed  # the first request is still in the window
    clock.now += 0.2
    again = limiter.hit("k", 60)  # the first one left the window: one slot
    assert again.allowed and again.remaining == 0
    assert not limiter.hit("k", 60).allowed  # refusals were not counted, slots were


def _vm(name: str, tenant: str, state: VmState, memory_mb: int = 512, cpus: int = 1) -> Vm:
    now = datetime.now(UTC)
    return Vm(
        name=name, image="tiny", memory_mb=memory_mb, cpus=cpus, id=f"vm-{name}", uuid=name,
        state=state, created_at=now, updated_at=now, tenant=tenant,
    )  # fmt: skip


def test_admission_quota_and_host_budget() -> None:
    budget = HostBudget(memory_mb=2048, vcpus=4, max_vcpus_per_vm=2)
    live = [_vm("a", "t1", VmState.RUNNING), _vm("b", "t2", VmState.RUNNING, 1024)]
    admit(_vm("c", "t1", VmState.STOPPED), live, quota=2, budget=budget)
    with pytest.raises(QuotaExceeded) as quota:
        admit(_vm("c", "t1", VmState.STOPPED), live, quota=1, budget=budget)
    assert quota.value.details == {"limit": 1, "current": 1}
    admit(_vm("c", "t1", VmState.STOPPED), live, quota=0, budget=budget)  # 0: unlimited
    with pytest.raises(InsufficientResources) as memory:
        admit(_vm("c", "t3", VmState.STOPPED, memory_mb=1024), live, quota=0, budget=budget)
    assert memory.value.details["free_memory_mb"] == 512
    assert memory.value.details["free_vcpus"] == 2
    with pytest.raises(InsufficientResources) as cpus:
        admit(_vm("c", "t3", VmState.STOPPED, cpus=3), [], quota=0, budget=budget)
    assert cpus.value.details["max_vcpus_per_vm"] == 2


@pytest.fixture
async def keyed(data_dir: Path, compile_cache: Path, tiny: Path) -> Any:
    async with keyed_server(data_dir, compile_cache) as k:
        yield k


async def test_61st_request_is_refused_and_other_keys_are_not(keyed: Keyed) -> None:
    remaining = []
    for _ in range(60):
        status, _, headers = await keyed.call("GET", "/api/v1/images", keyed.alice)
        assert status == 200 and headers["RateLimit-Limit"] == "60"
        remaining.append(int(headers["RateLimit-Remaining"]))
        assert 0 <= int(headers["RateLimit-Reset"]) <= 60
    assert remaining == list(range(59, -1, -1))
    status, body, headers = await keyed.call("GET", "/api/v1/images", keyed.alice)
    assert status == 429
    assert_error(body, "RATE_LIMITED")
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert headers["RateLimit-Limit"] == "60" and headers["RateLimit-Remaining"] == "0"
    assert body["error"]["details"]["limit"] == 60
    status, _, headers = await keyed.call("GET", "/api/v1/images", keyed.bob)
    assert status == 200 and headers["RateLimit-Remaining"] == "59"
    status, _, headers = await keyed.call("GET", "/api/v1/images", keyed.admin)
    assert status == 200 and "RateLimit-Limit" not in headers  # enterprise: unlimited


async def test_rate_limit_is_exact_under_concurrency(keyed: Keyed) -> None:
    statuses: list[int] = []

    async def one() -> None:
        status, _, _ = await keyed.call("GET", "/api/v1/vms", keyed.bob)
        statuses.append(status)

    async with trio.open_nursery() as nursery:
        for _ in range(75):
            nursery.start_soon(one)
    assert sorted(statuses) == [200] * 60 + [429] * 15


async def test_host_admission_refuses_before_qemu(
    data_dir: Path, compile_cache: Path, tiny: Path
) -> None:
    async with keyed_server(data_dir, compile_cache, memory_overcommit_ratio=0.01) as k:
        for name, extra, field in [
            ("big", {}, "free_memory_mb"),
            ("wide", {"cpus": 64}, "max_vcpus_per_vm"),
        ]:
            status, vm, _ = await k.call(
                "POST", "/api/v1/vms", k.alice, json={**VM, "name": name, **extra}
            )
            assert status == 201
            await k.call("GET", f"/api/v1/vms/{vm['id']}/wait?state=stopped", k.alice)
            status, body, _ = await k.call("POST", f"/api/v1/vms/{vm['id']}/start", k.alice)
            assert status == 409, body
            assert_error(body, "INSUFFICIENT_RESOURCES")
            assert field in body["error"]["details"]
            after = k.services.manager.get(vm["id"])
            assert after.state is VmState.STOPPED and after.pid is None
            assert qemu_pids_for({vm["uuid"]}) == []


@pytest.mark.qemu
async def test_quota_holds_under_racing_starts(
    data_dir: Path, compile_cache: Path, tiny: Path
) -> None:
    async with keyed_server(data_dir, compile_cache, vm_quota_free=1) as k:
        ids = []
        for name in ("one", "two"):
            status, vm, _ = await k.call("POST", "/api/v1/vms", k.alice, json={**VM, "name": name})
            assert status == 201
            ids.append(vm["id"])
            await k.call("GET", f"/api/v1/vms/{vm['id']}/wait?state=stopped", k.alice)
        results: list[tuple[int, Any]] = []

        async def start(vm_id: str) -> None:
            status, body, _ = await k.call("POST", f"/api/v1/vms/{vm_id}/start", k.alice)
            results.append((status, body))

        async with trio.open_nursery() as nursery:
            for vm_id in ids:
                nursery.start_soon(start, vm_id)
        statuses = sorted(status for status, _ in results)
        assert statuses[1] == 403 and statuses[0] in (200, 202), results
        refused = next(body for status, body in results if status == 403)
        assert_error(refused, "QUOTA_EXCEEDED")
        assert refused["error"]["details"] == {"limit": 1, "current": 1}
        live = [
            vm_id for vm_id in ids if k.services.manager.get(vm_id).state is not VmState.STOPPED
        ]
        assert len(live) == 1
        # Bob's tenant has its own quota.
        status, vm, _ = await k.call("POST", "/api/v1/vms", k.bob, json={**VM, "name": "b1"})
        await k.call("GET", f"/api/v1/vms/{vm['id']}/wait?state=stopped", k.bob)
        status, body, _ = await k.call("POST", f"/api/v1/vms/{vm['id']}/start", k.bob)
        assert status in (200, 202), body
