"""A NAT VM's passt for real, without QEMU: ready once its forward is bound, found
from its pidfile, gone once its socket closes; a forward it cannot bind is a clean
start failure that leaves no process behind."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from guestconsole import vm_paths
from hypermachine.api import Services
from hypermachine.errors import HypervisorError
from hypermachine.hypervisor.devices import passt
from hypermachine.hypervisor.devices.hostnet import port_free
from hypermachine.hypervisor.vmfiles.confine import unprivileged_identity
from hypermachine.hypervisor.vmfiles.layout import VmPaths
from hypermachine.models import (
    CreateVmRequest,
    ForwardInfo,
    NetworkInfo,
    NetworkSpec,
    PortForward,
    VmState,
)
from realserver import free_port
from support import process_gone, qemu_pids_for, wait_until


def nat(port: int) -> NetworkInfo:
    forward = ForwardInfo(protocol="tcp", host_address="127.0.0.1", host_port=port, guest_port=80)
    return NetworkInfo(
        type="nat", ip="10.0.2.15/24", gateway="10.0.2.2", dns=["10.0.2.3"], forwards=[forward]
    )


@pytest.fixture
def processes() -> passt.PasstProcesses:
    identity = unprivileged_identity() if os.geteuid() == 0 else None
    return passt.PasstProcesses("passt", timeout_s=10, identity=identity)


@pytest.fixture
def paths(tmp_path: Path) -> VmPaths:
    return VmPaths(vm_dir=tmp_path / "vm", run_dir=tmp_path / "run")


async def test_ready_means_its_forward_listens_and_it_ends_with_its_socket(
    processes: passt.PasstProcesses, paths: VmPaths
) -> None:
    paths.vm_dir.mkdir()
    port = free_port()
    qemu_end, guest_end = socket.socketpair()
    await processes.serve(nat(port), paths, guest_end)
    pid = passt.find(passt.PasstPaths.for_vm(paths))
    try:
        assert pid is not None
        assert not port_free("127.0.0.1", port, "tcp"), "ready before its forward was bound"
    finally:
        qemu_end.close()  # as QEMU exiting does
    assert pid is not None
    await processes.stop(paths)
    await wait_until(lambda: process_gone(pid), what="passt to end")
    assert passt.find(passt.PasstPaths.for_vm(paths)) is None
    assert port_free("127.0.0.1", port, "tcp")


async def test_a_forward_it_cannot_bind_fails_the_start(
    processes: passt.PasstProcesses, paths: VmPaths
) -> None:
    paths.vm_dir.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        qemu_end, guest_end = socket.socketpair()
        with qemu_end, pytest.raises(HypervisorError) as raised:
            await processes.serve(nat(port), paths, guest_end)
    assert "bind" in str(raised.value.details.get("log", ""))
    assert not passt.PasstPaths.for_vm(paths).pidfile.exists()


@pytest.mark.qemu
@pytest.mark.hm_settings(passt_binary="false")  # a passt that cannot start
async def test_a_passt_that_cannot_start_fails_the_boot_and_leaves_nothing(
    services: Services,
) -> None:
    """passt starts beside QEMU, and the guest runs only once passt serves: if it cannot
    start, the VM ends ``error`` saying so, its QEMU is gone and its ports are free."""
    port = free_port()
    request = CreateVmRequest(
        name="no-net", image="tiny", memory_mb=512, disk_gb=1,
        network=NetworkSpec(ports=[PortForward(host=port, guest=80)]), start=True,
    )  # fmt: skip
    created = await services.manager.create(request)
    vm = await services.manager.wait_for(created.vm.id, {VmState.ERROR}, 120)
    assert vm.state_reason is not None and "passt could not start" in vm.state_reason, vm
    assert qemu_pids_for({vm.uuid}) == []
    assert port_free("127.0.0.1", port, "tcp")
    assert passt.find(passt.PasstPaths.for_vm(vm_paths(services, vm.id))) is None
