"""Restarting the server never stops or loses a VM: running QEMUs are re-adopted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import trio

from hypermachine.config import Settings
from hypermachine.hypervisor.devices import passt
from hypermachine.hypervisor.vmfiles.layout import VmPaths
from hypermachine.models import CreateVmRequest, VmState
from hypermachine.server import open_services
from realserver import Server
from support import process_gone, qemu_pids_for, remove_all_vms, wait_until

pytestmark = pytest.mark.qemu


def passt_of(settings: Settings, vm_id: str) -> int | None:
    paths = VmPaths.for_vm(settings.vms_dir, settings.runtime_dir, vm_id)
    return passt.find(passt.PasstPaths.for_vm(paths))


async def test_restart_in_process_readopts(settings: Settings, tiny: Path) -> None:
    async with open_services(settings) as svc:
        created = await svc.manager.create(
            CreateVmRequest(name="keeper", image="tiny", memory_mb=512, disk_gb=1, start=True)
        )
        vm = await svc.manager.wait_for(created.vm.id, {VmState.RUNNING}, 60)
        stopper = await svc.manager.create(
            CreateVmRequest(name="goner", image="tiny", memory_mb=512, disk_gb=1, start=True)
        )
        goner = await svc.manager.wait_for(stopper.vm.id, {VmState.RUNNING}, 60)
    # The server is gone; QEMU and its passt are not.
    assert vm.pid is not None and psutil.pid_exists(vm.pid)
    network = passt_of(settings, vm.id)
    assert network is not None
    goner_pid = goner.pid
    assert goner_pid is not None
    psutil.Process(goner_pid).kill()
    await wait_until(lambda: process_gone(goner_pid), what="goner to die")

    async with open_services(settings) as svc:
        try:
            again = svc.manager.get(vm.id)
            assert again.state is VmState.RUNNING
            assert again.pid == vm.pid
            paused = await svc.manager.pause(vm.id)  # QMP works after the reconnect
            assert paused.state is VmState.PAUSED
            status = await svc.manager._machine(vm.id).execute("query-status")
            assert isinstance(status, dict) and status["status"] == "paused"
            lost = svc.manager.get(goner.id)
            assert lost.state is VmState.STOPPED
            assert lost.state_reason == "QEMU was not running when the server started"
            assert passt_of(settings, vm.id) == network  # re-found, still serving
            assert passt_of(settings, goner.id) is None
        finally:
            with trio.CancelScope(shield=True):
                uuids = await remove_all_vms(svc)
    assert qemu_pids_for(uuids) == []
    await wait_until(lambda: process_gone(network), what="passt to end with its VM")


def test_kill_9_server_then_readopt(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=90) as client:
        body = {"name": "survivor", "image": "tiny", "memory_mb": 512, "disk_gb": 1,
                "start": True, "wait": True}  # fmt: skip
        vm: dict[str, Any] = client.post("/api/v1/vms", json=body).json()
        assert vm["state"] == "running", vm
        pid = vm["pid"]

        server.kill9()
        assert psutil.pid_exists(pid), "QEMU must outlive a killed server"

        server.start()
        again = client.get(f"/api/v1/vms/{vm['id']}").json()
        assert again["state"] == "running"
        assert again["pid"] == pid
        paused = client.post(f"/api/v1/vms/{vm['id']}/pause").json()
        assert paused["state"] == "paused"
        stopped = client.post(
            f"/api/v1/vms/{vm['id']}/stop", json={"force": True, "wait": True}
        ).json()
        assert stopped["state"] == "stopped"
        assert process_gone(pid)
