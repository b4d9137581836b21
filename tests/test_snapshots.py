"""Snapshots, restore, fork and hibernation of a real tiny guest (docs/snapshots.md).

One parent guest is booted and carried through the steps of the big test (a boot costs
seconds on this shared TCG host); its forked children resume, they do not boot.
"""

from __future__ import annotations

import json
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import trio

from hypermachine.api import Services
from hypermachine.config import Settings
from hypermachine.errors import QuotaExceeded, SnapshotRefused, VmNotFound
from hypermachine.hypervisor.storage import layers, snapfiles
from hypermachine.hypervisor.storage.snapshots import refuse_memory
from hypermachine.models import (
    CreateFromSnapshotRequest,
    CreateVmRequest,
    ForkRequest,
    Snapshot,
    SnapshotRef,
    SnapshotRequest,
    Vm,
    VmState,
)
from hypermachine.security.caller import Caller, acting_as
from hypermachine.server import open_services
from realserver import Server, free_port
from support import (
    GARBLED_STREAM,
    boot_tiny,
    fetch_when_served,
    post,
    process_gone,
    qemu_pids_for,
    remove_all_vms,
    sh,
    wait_until_read,
)

pytestmark = pytest.mark.qemu

AGENT_WAIT = 180
VFIO_REASON = "VFIO device doesn't support migration"  # QEMU 7.2, hw/vfio/migration.c
TINY = {"image": "tiny", "memory_mb": 512, "disk_gb": 1}
OTHER = Caller(key_id="k-other", tenant="someone-else", tier="pro", admin=False)


async def qmp(services: Services, vm_id: str, command: str) -> Any:
    return await services.manager._machine(vm_id).execute(command)


def steps(services: Services, vm_id: str) -> list[str]:
    events = services.manager.events.after(0, vm_id=vm_id)
    return [e.data["step"] for e in events if e.type == "vm.snapshot"]


class VfioQmp:
    """The QMP boundary of a QEMU holding a VFIO device this host does not have: every
    command reaches the real QEMU except ``query-migrate``, answered as QEMU 7.2 does
    with a vfio-pci device attached."""

    def __init__(self, real: Any) -> None:
        self._real = real

    async def execute(self, command: str, arguments: Any = None) -> Any:
        if command == "query-migrate":
            return {"blocked-reasons": [VFIO_REASON]}
        return await self._real.execute(command, arguments)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


async def check_memory_snapshot_and_restore(client: Any, services: Services, vm_id: str) -> None:
    uptime_before = float(
        (await sh(client, vm_id, "echo first > /tmp/marker; cat /proc/uptime")).split()[0]
    )
    generation = (await qmp(services, vm_id, "query-vm-generation-id"))["guid"]

    status, snap = await post(
        client, f"/api/v1/vms/{vm_id}/snapshots", {"name": "s1", "memory": True}
    )
    assert status == 201, snap
    assert (snap["name"], snap["memory"], snap["vm_state"]) == ("s1", True, "running")
    assert snap["size_bytes"] > 1024 * 1024  # the RAM stream
    vm = await (await client.get(f"/api/v1/vms/{vm_id}")).get_json()
    assert vm["state"] == "running"
    assert (await qmp(services, vm_id, "query-status"))["status"] == "running"
    assert steps(services, vm_id)[:6] == [
        "started", "paused", "disk_frozen", "memory_saved", "resumed", "completed"
    ]  # fmt: skip
    listed = await (await client.get(f"/api/v1/vms/{vm_id}/snapshots")).get_json()
    assert [s["name"] for s in listed["snapshots"]] == ["s1"]
    taken = await client.post(f"/api/v1/vms/{vm_id}/snapshots", json={"name": "s1"})
    assert (taken.status_code, (await taken.get_json())["error"]["code"]) == (409, "NAME_TAKEN")

    assert await sh(client, vm_id, "echo second > /tmp/marker; cat /tmp/marker") == "second\n"
    status, vm = await post(client, f"/api/v1/vms/{vm_id}/snapshots/s1/restore", {"wait": True})
    assert (status, vm["state"]) == (200, "running"), vm
    assert await sh(client, vm_id, "cat /tmp/marker") == "first\n"
    uptime_after = float((await sh(client, vm_id, "cat /proc/uptime")).split()[0])
    assert uptime_after >= uptime_before, "the guest rebooted instead of resuming"
    assert (await qmp(services, vm_id, "query-vm-generation-id"))["guid"] != generation
    assert {"restore_started", "restored", "resumed"} <= set(steps(services, vm_id))
    # A NAT guest's NIC does not announce itself after the load (its passt is new).
    assert (await qmp(services, vm_id, "query-migrate-parameters"))["announce-rounds"] == 0


async def guest_mac(client: Any, vm_id: str) -> str:
    return (await sh(client, vm_id, "cat /sys/class/net/eth0/address")).strip()


async def check_fork(client: Any, services: Services, parent_id: str) -> list[dict[str, Any]]:
    body = {"name": "child", "snapshot": "s1", "count": 2, "wait": True}
    status, forked = await post(client, f"/api/v1/vms/{parent_id}/fork", body)
    assert status == 201, forked
    children: list[dict[str, Any]] = forked["vms"]
    assert [c["name"] for c in children] == ["child-1", "child-2"]
    assert all(c["state"] == "running" for c in children), children
    assert all(c["from_snapshot"] == {"vm_id": parent_id, "snapshot": "s1"} for c in children)
    parent = await (await client.get(f"/api/v1/vms/{parent_id}")).get_json()
    vms = [parent, *children]
    for vm in vms:
        # Each child answers exec (its agent reconnected) and remembers the parent's RAM.
        assert await sh(client, vm["id"], "cat /tmp/marker") == "first\n"
    uuids = {vm["uuid"] for vm in vms}
    assert len(uuids) == 3
    for vm in vms:
        assert (await qmp(services, vm["id"], "query-uuid"))["UUID"] == vm["uuid"]
    generations = {(await qmp(services, vm["id"], "query-vm-generation-id"))["guid"] for vm in vms}
    assert len(generations) == 3
    macs = {vm["network"]["mac"] for vm in vms}
    assert len(macs) == 3
    # The parent's forwarded host port is remapped to a free one per child.
    ports = [[f["host_port"] for f in vm["network_info"]["forwards"]] for vm in vms]
    assert all(len(p) == 1 for p in ports) and len({p[0] for p in ports}) == 3, ports
    for vm in vms:  # the children's guests took their own MAC through the agent
        mac = vm["network"]["mac"]
        await wait_until_read(partial(guest_mac, client, vm["id"]), mac, timeout=60)
    # The remap is reported as each child is made, and each host port reaches its own guest.
    forking = [e.data for e in services.manager.events.after(0, vm_id=parent_id)
               if e.type == "vm.snapshot" and e.data["step"] == "forking"]  # fmt: skip
    assert [f["forwards"] for f in forking] == [c["network_info"]["forwards"] for c in children]
    for vm in vms:
        await sh(
            client, vm["id"], f"mkdir -p /www && echo {vm['id']} > /www/who && httpd -p 22 -h /www"
        )
    for vm, (port,) in zip(vms, ports, strict=True):
        served = await fetch_when_served(f"http://127.0.0.1:{port}/who", timeout=60)
        assert served == f"{vm['id']}\n".encode()
    return children


async def check_template(client: Any, parent_id: str) -> None:
    ref = {"vm_id": parent_id, "snapshot": "s1"}
    status, kept = await post(client, "/api/v1/vms", {"name": "kept", "from_snapshot": ref})
    assert (status, kept["state"], kept["from_snapshot"]) == (201, "hibernated", ref), kept
    assert (kept["memory_mb"], kept["image"]) == (512, "tiny")
    status, vm = await post(client, f"/api/v1/vms/{kept['id']}/start", {"wait": True})
    assert (status, vm["state"]) == (200, "running"), vm
    assert await sh(client, kept["id"], "cat /tmp/marker") == "first\n"
    bad = {"name": "x", "from_snapshot": {"vm_id": parent_id, "snapshot": "nope"}}
    status, got = await post(client, "/api/v1/vms", bad)
    assert (status, got["error"]["code"]) == (404, "SNAPSHOT_NOT_FOUND"), got
    status, got = await post(client, "/api/v1/vms", {**bad, "image": "tiny"})
    assert (status, got["error"]["code"]) == (400, "VALIDATION_ERROR"), got
    deleted = await client.delete(f"/api/v1/vms/{kept['id']}?force=true")
    assert deleted.status_code == 204


async def check_refusals(client: Any, services: Services, vm_id: str) -> None:
    machine = services.manager._machine(vm_id)
    real = machine.session
    machine.session = VfioQmp(real)  # type: ignore[assignment]
    try:
        for path, body in (
            ("snapshots", {"name": "v1", "memory": True}),
            ("hibernate", {}),
            ("fork", {"name": "vfio-child"}),
        ):
            status, got = await post(client, f"/api/v1/vms/{vm_id}/{path}", body)
            assert (status, got["error"]["code"]) == (409, "SNAPSHOT_REFUSED"), (path, got)
            assert got["error"]["details"]["reasons"] == [VFIO_REASON]
            assert VFIO_REASON in got["error"]["message"]
    finally:
        machine.session = real
    status, got = await post(
        client, f"/api/v1/vms/{vm_id}/fork", {"name": "no-ports", "ports": "refuse"}
    )
    assert (status, got["error"]["code"]) == (409, "PORT_IN_USE"), got
    listed = await (await client.get(f"/api/v1/vms/{vm_id}/snapshots")).get_json()
    assert "v1" not in [s["name"] for s in listed["snapshots"]]
    missing = await client.get(f"/api/v1/vms/{vm_id}/snapshots/nope")
    assert (missing.status_code, (await missing.get_json())["error"]["code"]) == (
        404, "SNAPSHOT_NOT_FOUND"
    )  # fmt: skip
    for bad in ({"name": "a,b"}, {"name": "s", "memory": "maybe"}, {"name": "s", "extra": 1}):
        status, got = await post(client, f"/api/v1/vms/{vm_id}/snapshots", bad)
        assert (status, got["error"]["code"]) == (400, "VALIDATION_ERROR"), bad


async def check_other_tenant_sees_nothing(services: Services, vm_id: str) -> None:
    manager = services.manager
    with acting_as(OTHER):
        for call in (
            lambda: manager.snapshot(vm_id, SnapshotRequest(name="x")),
            lambda: manager.delete_snapshot(vm_id, "s1"),
            lambda: manager.restore(vm_id, "s1"),
            lambda: manager.fork(vm_id, ForkRequest(name="theirs")),
            lambda: manager.hibernate(vm_id),
            lambda: manager.create_from_snapshot(
                CreateFromSnapshotRequest(
                    name="theirs", from_snapshot=SnapshotRef(vm_id=vm_id, snapshot="s1")
                )
            ),
        ):
            with pytest.raises(VmNotFound):
                await call()
        with pytest.raises(VmNotFound):
            manager.list_snapshots(vm_id)
        with pytest.raises(VmNotFound):
            manager.get_snapshot(vm_id, "s1")


async def check_disk_only_snapshot(client: Any, vm_id: str) -> None:
    await sh(client, vm_id, "echo kept > /mnt/disk-marker && sync")
    status, vm = await post(client, f"/api/v1/vms/{vm_id}/stop", {"force": True, "wait": True})
    assert (status, vm["state"]) == (200, "stopped"), vm
    status, snap = await post(
        client, f"/api/v1/vms/{vm_id}/snapshots", {"name": "d1", "memory": True}
    )
    assert status == 201, snap
    assert (snap["memory"], snap["vm_state"]) == (False, "stopped")  # a stopped VM: disk only
    status, vm = await post(client, f"/api/v1/vms/{vm_id}/start", {"wait": True})
    assert vm["state"] == "running", vm
    await sh(client, vm_id, "echo changed > /mnt/disk-marker && sync")
    status, vm = await post(client, f"/api/v1/vms/{vm_id}/snapshots/d1/restore", {"wait": True})
    assert (status, vm["state"]) == (200, "stopped"), vm
    status, vm = await post(client, f"/api/v1/vms/{vm_id}/start", {"wait": True})
    assert vm["state"] == "running", vm
    assert await sh(client, vm_id, "cat /mnt/disk-marker") == "kept\n"


def chain_files(services: Services, vm_id: str) -> list[str]:
    disk = services.settings.vms_dir / vm_id / "disk.qcow2"
    info = subprocess.run(
        ["qemu-img", "info", "-U", "--backing-chain", "--output=json", str(disk)],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    return [entry["filename"] for entry in json.loads(info.stdout)]


async def test_snapshot_restore_fork_and_refusals(client: Any, services: Services) -> None:
    forwarded = free_port()
    body = {"name": "parent", **TINY, "start": True, "wait": True,
            "network": {"ports": [{"host": forwarded, "guest": 22}]}}  # fmt: skip
    status, parent = await post(client, "/api/v1/vms", body)
    assert (status, parent["state"]) == (201, "running"), parent
    vm_id = parent["id"]

    await check_memory_snapshot_and_restore(client, services, vm_id)
    children = await check_fork(client, services, vm_id)
    await check_refusals(client, services, vm_id)
    await check_other_tenant_sees_nothing(services, vm_id)

    await check_template(client, vm_id)

    # The snapshot and then the parent go; the children hold their own links.
    deleted = await client.delete(f"/api/v1/vms/{vm_id}/snapshots/s1")
    assert deleted.status_code == 204
    await check_disk_only_snapshot(client, vm_id)
    deleted = await client.delete(f"/api/v1/vms/{vm_id}?force=true")
    assert deleted.status_code == 204
    child_dir = str(services.settings.vms_dir / children[0]["id"])
    for path in chain_files(services, children[0]["id"])[:-1]:  # the last is the catalogue's
        assert path.startswith(child_dir), path
    assert await sh(client, children[0]["id"], "cat /tmp/marker") == "first\n"


def test_refuse_memory_of_a_confidential_vm() -> None:
    vm = Vm.model_validate(
        {"name": "sev", "image": "tiny", "id": "vm-1",
         "uuid": "00000000-0000-4000-8000-000000000001", "state": "running",
         "created_at": "2026-01-01T00:00:00Z",
         "updated_at": "2026-01-01T00:00:00Z", "firmware": "uefi",
         "security": {"memory_encryption": "sev"}}
    )  # fmt: skip
    with pytest.raises(SnapshotRefused) as refused:
        refuse_memory(vm, [])
    assert refused.value.details["reasons"] == ["memory_encryption sev"]


def test_hibernate_survives_a_killed_server(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=240) as http:
        body = {"name": "sleeper", "image": "tiny", "memory_mb": 512, "disk_gb": 1,
                "start": True, "wait": True}  # fmt: skip
        vm = http.post("/api/v1/vms", json=body).json()
        assert vm["state"] == "running", vm
        exec_url = f"/api/v1/vms/{vm['id']}/exec?wait_agent={AGENT_WAIT}"
        wrote = http.post(exec_url, json={"command": ["sh", "-c", "echo dreamt > /tmp/marker"]})
        assert wrote.status_code == 200, wrote.json()

        hibernated = http.post(f"/api/v1/vms/{vm['id']}/hibernate").json()
        assert hibernated["state"] == "hibernated", hibernated
        assert hibernated["pid"] is None
        assert process_gone(vm["pid"])
        assert qemu_pids_for({vm["uuid"]}) == []

        server.kill9()
        server.start()
        again = http.get(f"/api/v1/vms/{vm['id']}").json()
        assert again["state"] == "hibernated", again
        started = http.post(f"/api/v1/vms/{vm['id']}/start", json={"wait": True}).json()
        assert started["state"] == "running", started
        assert psutil.pid_exists(started["pid"])
        read = http.post(exec_url, json={"command": ["cat", "/tmp/marker"]}).json()
        assert read["stdout"] == "dreamt\n", read
        resume_dir = Path(server.data_dir) / "vms" / vm["id"] / "resume"
        assert not resume_dir.exists(), "the saved RAM is dropped once the guest runs"


def test_layers_are_portable_by_name(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    vm_dir = tmp_path / "vm"
    vm_dir.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
         str(vm_dir / layers.FIRST)], check=True,
    )  # fmt: skip
    layers.point_top(vm_dir, layers.FIRST)
    assert layers.chain(vm_dir, layers.current(vm_dir)) == [layers.FIRST]
    assert layers.backing_of(vm_dir / layers.FIRST) == str(base)


async def test_a_server_killed_mid_snapshot_leaves_the_vm_running(
    settings: Settings, tiny: Path
) -> None:
    async with open_services(settings) as svc:
        created = await svc.manager.create(
            CreateVmRequest(name="mid", image="tiny", memory_mb=512, disk_gb=1, start=True)
        )
        vm = await svc.manager.wait_for(created.vm.id, {VmState.RUNNING}, 120)
        # What a server killed between pausing the guest and publishing the snapshot
        # leaves: a paused QEMU, a partial snapshot folder, the VM stored `snapshotting`.
        await svc.manager._machine(vm.id).execute("stop")
        vm_dir = settings.vms_dir / vm.id
        folder = snapfiles.snapshot_dir(vm_dir, "half", partial=True)
        folder.make()
        stub = Snapshot(name="half", vm_id=vm.id, created_at=vm.created_at, memory=True,
                        size_bytes=0, vm_state=VmState.RUNNING)  # fmt: skip
        folder.write_meta(stub, layer="")
        with folder.new_memory() as memory:
            memory.write(b"half a stream")
        svc.manager._set(vm.id, VmState.SNAPSHOTTING, None)
    assert vm.pid is not None and psutil.pid_exists(vm.pid)

    async with open_services(settings) as svc:
        try:
            again = svc.manager.get(vm.id)
            assert (again.state, again.pid) == (VmState.RUNNING, vm.pid)
            status = await svc.manager._machine(vm.id).execute("query-status")
            assert isinstance(status, dict) and status["status"] == "running"
            assert not folder.path.exists()
            assert svc.manager.list_snapshots(vm.id) == []
        finally:
            with trio.CancelScope(shield=True):
                uuids = await remove_all_vms(svc)
    assert qemu_pids_for(uuids) == []


@pytest.mark.hm_settings(storage_quota_mb_free=1)
async def test_storage_quota_counts_the_tenants_vm_folders(services: Services) -> None:
    free = Caller(key_id="k-free", tenant="default", tier="free", admin=False)
    manager = services.manager
    with acting_as(free):
        created = await manager.create(
            CreateVmRequest(name="quota", image="tiny", memory_mb=512, disk_gb=1)
        )
        vm = await manager.wait_for(created.vm.id, {VmState.STOPPED}, 60)
        (services.settings.vms_dir / vm.id / "filler").write_bytes(b"\1" * 2 * 1024 * 1024)
        with pytest.raises(QuotaExceeded) as caught:
            await manager.snapshot(vm.id, SnapshotRequest(name="big"))
        assert caught.value.details["kind"] == "storage"
        used, limit = (caught.value.details[k] for k in ("used_bytes", "limit_bytes"))
        assert isinstance(used, int) and isinstance(limit, int) and used > limit
        assert manager.list_snapshots(vm.id) == []
        assert manager.get(vm.id).state is VmState.STOPPED


async def test_fork_and_template_refuse_bad_input(client: Any, services: Services) -> None:
    status, vm = await post(client, "/api/v1/vms", {"name": "still", **TINY, "wait": True})
    assert (status, vm["state"]) == (201, "stopped"), vm
    fork = f"/api/v1/vms/{vm['id']}/fork"
    for body, code in (
        ({"name": "c", "ips": ["not-an-ip"]}, (400, "VALIDATION_ERROR")),
        ({"name": "c", "ips": ["10.0.0.5"]}, (400, "VALIDATION_ERROR")),  # a nat parent
        ({"name": "c", "count": 0}, (400, "VALIDATION_ERROR")),
        ({"name": "c"}, (409, "INVALID_STATE")),  # an instant fork needs a live VM
        ({"name": "c", "snapshot": "none"}, (404, "SNAPSHOT_NOT_FOUND")),
    ):
        status, got = await post(client, fork, body)
        assert (status, got["error"]["code"]) == code, (body, got)
    ref = {"vm_id": vm["id"], "snapshot": "none"}
    status, got = await post(
        client, "/api/v1/vms", {"name": "t", "from_snapshot": ref, "labels": {"bad key": "x"}}
    )
    assert (status, got["error"]["code"]) == (400, "VALIDATION_ERROR"), got
    missing = {"name": "t", "from_snapshot": {"vm_id": "vm-nope", "snapshot": "s"}}
    status, got = await post(client, "/api/v1/vms", missing)
    assert (status, got["error"]["code"]) == (404, "VM_NOT_FOUND"), got
    assert [v.name for v in services.manager.list()[0]] == ["still"]

    status, snap = await post(
        client,
        f"/api/v1/vms/{vm['id']}/snapshots",
        {"name": "later", "memory": True, "wait": False},
    )
    assert (status, snap["complete"], snap["memory"], snap["vm_state"]) == (
        202, False, False, "stopped"
    ), snap  # fmt: skip
    done = await client.get(f"/api/v1/vms/{vm['id']}/wait?state=stopped&timeout=30")
    assert done.status_code == 200
    assert [s.name for s in services.manager.list_snapshots(vm["id"])] == ["later"]


async def test_a_damaged_snapshot_layer_fails_the_restore_cleanly(
    client: Any, services: Services
) -> None:
    """The frozen layer lives in the VM's folder, where QEMU's user can write: a restore
    from one that is no longer a qcow2 image is refused, and the VM stays manageable."""
    status, vm = await post(client, "/api/v1/vms", {"name": "damaged", **TINY, "wait": True})
    assert (status, vm["state"]) == (201, "stopped"), vm
    status, snap = await post(client, f"/api/v1/vms/{vm['id']}/snapshots", {"name": "s"})
    assert status == 201, snap
    _, layer = services.manager.snapshots._dir(vm["id"], "s").meta()
    frozen = services.settings.vms_dir / vm["id"] / layer
    with frozen.open("r+b") as image:
        image.write(b"\0" * 512)  # no qcow2 header any more

    status, got = await post(client, f"/api/v1/vms/{vm['id']}/snapshots/s/restore", {})
    assert (status, got["error"]["code"]) == (409, "VM_FILES_DAMAGED"), got
    assert layer in got["error"]["message"], got
    after = services.manager.get(vm["id"])
    assert after.state is VmState.STOPPED, after
    assert after.state_reason is not None and "restore failed" in after.state_reason
    deleted = await client.delete(f"/api/v1/vms/{vm['id']}?force=true")
    assert deleted.status_code in (200, 202, 204), await deleted.get_json()


async def test_a_resume_image_the_qemu_user_garbled_fails_the_start_cleanly(
    client: Any, services: Services
) -> None:
    """The saved RAM lies in the VM's folder, which QEMU's user can write: a stream that
    is not QEMU's leaves the VM hibernated with QEMU's reason, and the server serving."""
    vm = await boot_tiny(client, "garbled")
    status, slept = await post(client, f"/api/v1/vms/{vm['id']}/hibernate", {})
    assert (status, slept["state"]) == (200, "hibernated"), slept
    memory = services.settings.vms_dir / vm["id"] / "resume" / "memory.bin"
    memory.write_bytes(GARBLED_STREAM)

    status, started = await post(client, f"/api/v1/vms/{vm['id']}/start", {"wait": True})
    assert (status, started["error"]["code"]) == (409, "INVALID_STATE"), started
    assert started["error"]["message"].startswith(f"VM {vm['id']} went to hibernated"), started
    assert started["error"]["details"]["vm_id"] == vm["id"], started
    after = services.manager.get(vm["id"])
    assert after.state is VmState.HIBERNATED, after
    assert after.state_reason is not None and "Not a migration stream" in after.state_reason
    listed = await client.get("/api/v1/vms")
    assert listed.status_code == 200
    deleted = await client.delete(f"/api/v1/vms/{vm['id']}?force=true")
    assert deleted.status_code in (200, 202, 204), await deleted.get_json()


async def test_a_vm_hibernated_paused_starts_back_paused(client: Any, services: Services) -> None:
    vm = await boot_tiny(client, "napper")
    status, paused = await post(client, f"/api/v1/vms/{vm['id']}/pause", {})
    assert paused.get("state") == "paused", paused
    status, slept = await post(client, f"/api/v1/vms/{vm['id']}/hibernate", {})
    assert (status, slept["state"]) == (200, "hibernated"), slept

    status, started = await post(client, f"/api/v1/vms/{vm['id']}/start", {"wait": True})
    assert (status, started["state"]) == (200, "paused"), started
    assert services.manager.get(vm["id"]).state is VmState.PAUSED
    deleted = await client.delete(f"/api/v1/vms/{vm['id']}?force=true")
    assert deleted.status_code in (200, 202, 204), await deleted.get_json()


async def test_a_memory_snapshot_the_qemu_user_garbled_fails_its_restore_cleanly(
    client: Any, services: Services
) -> None:
    """The restore ends the running QEMU before the new one loads: the VM is left
    hibernated with QEMU's reason (a waiting restore answers at once), and stop then
    start brings it back booted."""
    vm = await boot_tiny(client, "garbled-snap")
    url = f"/api/v1/vms/{vm['id']}/snapshots"
    status, snap = await post(client, url, {"name": "s", "memory": True, "standby": False})
    assert status == 201, snap
    memory = services.settings.vms_dir / vm["id"] / "snapshots" / "s" / "memory.bin"
    memory.write_bytes(GARBLED_STREAM)

    status, got = await post(client, f"{url}/s/restore", {"wait": True})
    assert (status, got["error"]["code"]) == (409, "INVALID_STATE"), got
    after = services.manager.get(vm["id"])
    assert after.state is VmState.HIBERNATED, after
    assert after.state_reason is not None and "Not a migration stream" in after.state_reason
    assert "stop discards the saved RAM" in after.state_reason
    status, stopped = await post(client, f"/api/v1/vms/{vm['id']}/stop", {"wait": True})
    assert (status, stopped["state"]) == (200, "stopped"), stopped
    status, booted = await post(client, f"/api/v1/vms/{vm['id']}/start", {"wait": True})
    assert (status, booted["state"]) == (200, "running"), booted
    deleted = await client.delete(f"/api/v1/vms/{vm['id']}?force=true")
    assert deleted.status_code in (200, 202, 204), await deleted.get_json()
