"""Restores kept ready (docs/snapshots.md, hypervisor/standby.py), on a real tiny guest:
a memory snapshot gets a paused QEMU holding its RAM, a restore switches to it, and it
never outlives what it depends on or takes memory a VM start needs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

from hypermachine.api import Services, create_app
from hypermachine.config import Settings
from hypermachine.hypervisor.devices import passt
from hypermachine.hypervisor.storage import layers
from hypermachine.server import open_services
from support import (
    GARBLED_STREAM,
    boot_tiny,
    post,
    process_gone,
    qemu_pids_for,
    remove_all_vms,
    sh,
    wait_until_read,
)

pytestmark = pytest.mark.qemu

TINY = {"image": "tiny", "memory_mb": 512, "disk_gb": 1}
QUICK = {"snapshot_standby": True, "snapshot_standby_after_s": 0.05}
# Room for one 512 MiB VM and one standby of it, not for a second VM beside them.
_HOST_MB = psutil.virtual_memory().total // 2**20
TWO_VMS_RATIO = (1024 + 100) / _HOST_MB


async def snapshot(client: Any, vm_id: str, name: str, **extra: Any) -> dict[str, Any]:
    body = {"name": name, "memory": True, **extra}
    status, snap = await post(client, f"/api/v1/vms/{vm_id}/snapshots", body)
    assert status == 201, snap
    return dict(snap)


async def with_standby(client: Any, vm: dict[str, Any], name: str, **extra: Any) -> int:
    """Take the memory snapshot ``name``; once its standby is loaded, its QEMU's pid."""
    await snapshot(client, vm["id"], name, **extra)
    await wait_until_read(lambda: ready(client, vm["id"], name), True, timeout=60)
    [pid] = standby_pids(vm["uuid"], vm["pid"])
    return pid


async def ready(client: Any, vm_id: str, name: str) -> bool:
    got = await (await client.get(f"/api/v1/vms/{vm_id}/snapshots/{name}")).get_json()
    return bool(got["ready"])


def standby_pids(uuid: str, running: int | None) -> list[int]:
    """The QEMUs of the VM besides the one it runs in."""
    return [pid for pid in qemu_pids_for({uuid}) if pid != running]


def steps(services: Services, vm_id: str) -> list[dict[str, Any]]:
    events = services.manager.events.after(0, vm_id=vm_id)
    return [e.data for e in events if e.type == "vm.snapshot"]


def run_dirs(services: Services, vm_id: str) -> list[str]:
    return sorted(p.name for p in services.settings.runtime_dir.iterdir() if vm_id in p.name)


@pytest.mark.hm_settings(**QUICK)
async def test_a_restore_switches_to_the_standby_and_a_new_one_follows(
    client: Any, services: Services
) -> None:
    vm = await boot_tiny(client, "ready")
    vm_id, uuid = vm["id"], vm["uuid"]
    uptime = float(
        (await sh(client, vm_id, "echo first > /tmp/marker; cat /proc/uptime")).split()[0]
    )
    taken = await snapshot(client, vm_id, "s1")
    assert (taken["standby"], taken["ready"]) == (True, False)
    await wait_until_read(lambda: ready(client, vm_id, "s1"), True, timeout=60)
    [standby_pid] = standby_pids(uuid, vm["pid"])
    old_passt = passt.find(passt.PasstPaths.for_vm(services.manager._paths(vm_id)))
    standby = services.manager.standbys._ready[vm_id]
    assert standby.machine is not None
    status: Any = await standby.machine.execute("query-status")
    assert status["status"] == "paused"
    vm_dir = services.settings.vms_dir / vm_id
    assert standby.top is not None and layers.current(vm_dir) != standby.top

    assert await sh(client, vm_id, "echo second > /tmp/marker; cat /tmp/marker") == "second\n"
    status, restored = await post(client, f"/api/v1/vms/{vm_id}/snapshots/s1/restore", {})
    assert (status, restored["state"], restored["pid"]) == (200, "running", standby_pid), restored
    assert process_gone(vm["pid"])
    assert await sh(client, vm_id, "cat /tmp/marker") == "first\n"
    assert float((await sh(client, vm_id, "cat /proc/uptime")).split()[0]) >= uptime
    assert layers.current(vm_dir) == standby.top
    assert restored["generation_id"] not in (None, vm["generation_id"])
    machine = services.manager._machine(vm_id)
    generation: Any = await machine.execute("query-vm-generation-id")
    assert generation["guid"] == restored["generation_id"]
    # A NAT guest's NIC does not announce itself after the load (its passt is new).
    parameters: Any = await machine.execute("query-migrate-parameters")
    assert parameters["announce-rounds"] == 0
    done = [s for s in steps(services, vm_id) if s["step"] == "restored"]
    assert done[-1] == {"step": "restored", "snapshot": "s1", "standby": True}
    assert standby.paths.run_dir.name not in run_dirs(services, vm_id)  # the old QEMU's
    served = passt.find(passt.PasstPaths.for_vm(services.manager._paths(vm_id)))
    assert served is not None and served != old_passt  # a new passt serves the guest

    # The VM was restored to s1: a new standby of s1 follows, and goes with the snapshot.
    await wait_until_read(lambda: ready(client, vm_id, "s1"), True, timeout=60)
    [again] = standby_pids(uuid, standby_pid)
    top = services.manager.standbys._ready[vm_id].top
    assert top is not None and (vm_dir / top).exists()
    deleted = await client.delete(f"/api/v1/vms/{vm_id}/snapshots/s1")
    assert deleted.status_code == 204
    assert process_gone(again)
    assert not (vm_dir / top).exists()
    assert run_dirs(services, vm_id) == [vm_id]
    assert await sh(client, vm_id, "cat /tmp/marker") == "first\n"
    deleted = await client.delete(f"/api/v1/vms/{vm_id}?force=true")
    assert deleted.status_code == 204
    assert qemu_pids_for({uuid}) == []


@pytest.mark.hm_settings(**QUICK)
async def test_a_standby_goes_with_its_vms_qemu_and_a_snapshot_can_decline_one(
    client: Any, services: Services
) -> None:
    vm = await boot_tiny(client, "short")
    vm_id, uuid = vm["id"], vm["uuid"]
    standby_pid = await with_standby(client, vm, "s1")

    declined = await snapshot(client, vm_id, "s2", standby=False)
    assert (declined["standby"], declined["ready"]) == (False, False)
    assert await ready(client, vm_id, "s1"), "a snapshot without a standby keeps the old one"
    status, back = await post(client, f"/api/v1/vms/{vm_id}/snapshots/s2/restore", {})
    assert (status, back["state"]) == (200, "running"), back
    assert back["pid"] not in (vm["pid"], standby_pid)  # a launch, not the switch
    assert {"step": "restored", "snapshot": "s2", "standby": False} in steps(services, vm_id)
    assert await ready(client, vm_id, "s1")

    status, stopped = await post(client, f"/api/v1/vms/{vm_id}/stop", {"force": True})
    assert status in (200, 202), stopped
    await wait_until_read(lambda: trio.to_thread.run_sync(process_gone, standby_pid), True, 30)
    assert not await ready(client, vm_id, "s1")
    dropped = [s for s in steps(services, vm_id) if s["step"] == "standby_dropped"]
    assert dropped and dropped[-1]["reason"] == "its QEMU ended"
    assert qemu_pids_for({uuid}) == []
    assert run_dirs(services, vm_id) in ([], [vm_id])


@pytest.mark.hm_settings(
    snapshot_standby=True, snapshot_standby_after_s=0.05, memory_overcommit_ratio=TWO_VMS_RATIO
)
async def test_a_vm_start_takes_the_memory_of_a_standby(client: Any, services: Services) -> None:
    first = await boot_tiny(client, "first")
    standby_pid = await with_standby(client, first, "s1")

    second = await boot_tiny(client, "second")  # 512 + 512 + 512 MiB would not fit
    assert process_gone(standby_pid)
    assert not await ready(client, first["id"], "s1")
    dropped = [s for s in steps(services, first["id"]) if s["step"] == "standby_dropped"]
    assert dropped[-1]["reason"] == "a VM start needed the memory"

    await snapshot(client, first["id"], "s2")  # no room for one now
    skipped: list[dict[str, Any]] = []
    with trio.fail_after(30):
        while not skipped:
            await trio.sleep(0.05)
            skipped = [s for s in steps(services, first["id"]) if s["step"] == "standby_skipped"]
    assert "memory budget" in skipped[-1]["reason"], skipped
    assert standby_pids(first["uuid"], first["pid"]) == []
    for vm in (first, second):
        await client.delete(f"/api/v1/vms/{vm['id']}?force=true")


async def test_no_standby_outlives_its_server(settings: Settings, tiny: Path) -> None:
    """One the server ends as it stops; one a server killed outright left behind is
    ended by the next (its run dir is a migration leftover's)."""
    quick = replace(settings, snapshot_standby=True, snapshot_standby_after_s=0.05)
    async with open_services(quick) as svc:
        client = create_app(svc).test_client()
        vm = await boot_tiny(client, "left")
        stopped_with_it = await with_standby(client, vm, "s1")
    assert process_gone(stopped_with_it)
    assert psutil.pid_exists(vm["pid"])

    async with open_services(quick) as svc:
        client = create_app(svc).test_client()
        left_behind = await with_standby(client, vm, "s2")
        left = svc.manager.standbys._ready.pop(vm["id"])  # as if the server had been killed
        assert left.machine is not None and left.machine.session is not None
        await left.machine.session.close()
    assert psutil.pid_exists(left_behind)

    async with open_services(quick) as svc:
        assert process_gone(left_behind)
        assert run_dirs(svc, vm["id"]) == [vm["id"]]
        assert svc.manager.get(vm["id"]).pid == vm["pid"]
        with trio.CancelScope(shield=True):
            await remove_all_vms(svc)


@pytest.mark.hm_settings(snapshot_standby=True, snapshot_standby_after_s=3.0)
async def test_a_standby_of_a_garbled_ram_file_fails_alone(client: Any, services: Services) -> None:
    """The snapshot's RAM file lies in the VM's folder, which QEMU's user can write: the
    standby that would load it fails with QEMU's reason, leaves no QEMU behind, and the
    VM runs on untouched."""
    vm = await boot_tiny(client, "garbled-standby")
    vm_id, uuid = vm["id"], vm["uuid"]
    await snapshot(client, vm_id, "s1")  # its standby is made 3 s from now
    memory = services.settings.vms_dir / vm_id / "snapshots" / "s1" / "memory.bin"
    memory.write_bytes(GARBLED_STREAM)

    def failed() -> list[dict[str, Any]]:
        return [s for s in steps(services, vm_id) if s["step"] == "standby_failed"]

    await wait_until_read(lambda: trio.to_thread.run_sync(lambda: bool(failed())), True, 60)
    assert "Not a migration stream" in failed()[0]["reason"], failed()
    assert not await ready(client, vm_id, "s1")
    await wait_until_read(lambda: trio.to_thread.run_sync(standby_pids, uuid, vm["pid"]), [], 30)
    assert services.manager.get(vm_id).state.value == "running"
    assert (await sh(client, vm_id, "echo alive")) == "alive\n"
