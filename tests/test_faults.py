"""Containment (hypervisor/faults.py): a failing VM task is reported, never raised on;
cancellation still passes; a VM task that fails in a real server ends only that VM.
QMP events with odd fields are read without raising."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import trio

from hypermachine.api import Services
from hypermachine.hypervisor.qemu.faults import contained
from hypermachine.hypervisor.qemu.machine import qmp_event
from hypermachine.models import EventType


async def test_a_failure_goes_to_the_fault_handler_not_the_caller() -> None:
    reasons: list[str] = []

    async def broken() -> None:
        raise KeyError("out-data")

    await contained("vm-1", "the QMP session", broken, reasons.append)
    assert reasons == ["internal error in the QMP session: KeyError: 'out-data'"]


async def test_a_failure_inside_a_nursery_and_an_async_handler() -> None:
    reasons: list[str] = []

    async def handler(reason: str) -> None:
        await trio.lowlevel.checkpoint()
        reasons.append(reason)

    async def broken_child() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise ValueError("`seconds` must be non-negative")

    await contained("vm-1", "stopping the VM", broken_child, handler)
    why = "ValueError: `seconds` must be non-negative"
    assert reasons == [f"internal error in stopping the VM: {why}"]


async def test_a_failing_handler_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def broken() -> None:
        raise RuntimeError("first")

    def handler(_reason: str) -> None:
        raise RuntimeError("second")

    await contained("vm-1", "part", broken, handler)
    assert "handling the fault in part failed too" in caplog.text


async def test_cancellation_passes_through() -> None:
    reasons: list[str] = []
    with trio.CancelScope() as scope:
        scope.cancel()
        await contained("vm-1", "part", trio.sleep_forever, reasons.append)
    assert scope.cancelled_caught and reasons == []


async def test_a_failure_while_cancelled_is_still_reported() -> None:
    reasons: list[str] = []

    async def fail_while_cancelled() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            nursery.cancel_scope.cancel()
            raise ValueError("boom")

    with trio.CancelScope() as outer:
        outer.cancel()
        await contained("vm-1", "part", fail_while_cancelled, reasons.append)
    assert reasons == ["internal error in part: ValueError: boom"]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            {"event": "SHUTDOWN", "data": {"reason": "guest-shutdown"}},
            ("SHUTDOWN", {"reason": "guest-shutdown"}),
        ),
        ({"event": "STOP"}, ("STOP", {})),
        ({"event": "SHUTDOWN", "data": ["reason"]}, ("SHUTDOWN", {})),
        ({"event": "GUEST_PANICKED", "data": None}, ("GUEST_PANICKED", {})),
        ({"event": 7, "data": {}}, ("", {})),
        ({}, ("", {})),
    ],
)
def test_qmp_events_with_odd_fields(
    message: dict[str, object], expected: tuple[str, dict[str, object]]
) -> None:
    assert qmp_event(message) == expected


async def test_a_failing_vm_task_makes_only_that_vm_error(client: Any, services: Services) -> None:
    """An unexpected error in a VM's provisioning (here: its folder cannot be made,
    an OSError nobody translates) marks that VM error; the server carries on."""
    vms_dir = services.settings.vms_dir
    shutil.rmtree(vms_dir, ignore_errors=True)
    vms_dir.write_text("not a folder")
    body = {"name": "doomed", "image": "tiny", "memory_mb": 512, "disk_gb": 1}
    response = await client.post("/api/v1/vms", json=body)
    assert response.status_code == 201, await response.get_data()
    vm_id = (await response.get_json())["id"]
    response = await client.get(f"/api/v1/vms/{vm_id}/wait?state=error&timeout=30")
    vm = await response.get_json()
    assert response.status_code == 200, vm
    assert vm["state_reason"].startswith("internal error in the VM's supervision: "), vm
    faults = [e for e in services.manager.events.after(0) if e.type is EventType.VM_FAULT]
    assert [(e.vm_id, e.data["part"]) for e in faults] == [(vm_id, "the VM's supervision")]
    assert (await client.get("/health")).status_code == 200
    vms_dir.unlink()  # let the fixture's teardown delete the VM
