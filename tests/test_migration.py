"""Live migration of a real tiny guest to a fresh QEMU on the same host (docs/cluster.md).

One guest (the tiny guest under UEFI, NAT with a forwarded port, vTPM) is booted and
moved twice; the checks run on it in between: its uptime keeps counting, a file in its
tmpfs survives, its TPM still answers with the same PCR, a UEFI variable written
before is still there and one written after lands in the VM's VARS file, the old
QEMU, swtpm and passt are gone, the new ones hold the VM's names, and exec works.
"""

from __future__ import annotations

from typing import Any

import pytest

from hypermachine.api import Services
from hypermachine.errors import MigrationRefused
from hypermachine.hypervisor import migration
from hypermachine.hypervisor.devices import passt
from hypermachine.hypervisor.devices.hostnet import port_free
from hypermachine.hypervisor.migration_service import refuse
from hypermachine.hypervisor.platform import tpm
from hypermachine.hypervisor.platform.vmplatform import vars_file
from hypermachine.models import Vm
from realserver import free_port
from support import process_gone, qemu_pids_for, wait_until
from test_secure_boot import VAR_GUID
from test_snapshots import TINY, VFIO_REASON, VfioQmp, post, sh

pytestmark = pytest.mark.qemu

# TPM2_PCR_Read of PCR 0 (sha256), sent raw: a TPM whose state did not arrive was never
# started up and answers TPM_RC_INITIALIZE (0x100) instead of success.
PCR_READ = (
    "exec 3<>/dev/tpm0; printf '\\200\\001\\000\\000\\000\\024\\000\\000\\001\\176"
    "\\000\\000\\000\\001\\000\\013\\003\\001\\000\\000' >&3; "
    "dd bs=4096 count=1 <&3 2>/dev/null | od -An -tx1 | tr -d ' \\n'"
)


async def pcr0(client: Any, vm_id: str) -> str:
    """The TPM's answer to reading PCR 0, checked to be a success."""
    answer = await sh(client, vm_id, PCR_READ)
    assert answer[12:20] == "00000000", f"the TPM answered {answer}"
    return answer


def steps(services: Services, vm_id: str) -> list[dict[str, Any]]:
    events = services.manager.events.after(0, vm_id=vm_id)
    return [e.data for e in events if e.type == "vm.migration"]


EFIVARS = "/sys/firmware/efi/efivars"


async def write_var(client: Any, vm_id: str, name: str, value: str) -> None:
    await sh(
        client, vm_id,
        f"mountpoint -q {EFIVARS} || mount -t efivarfs efivarfs {EFIVARS}; "
        f"printf '\\007\\000\\000\\000{value}' > {EFIVARS}/{name}-{VAR_GUID}",
    )  # fmt: skip


async def read_var(client: Any, vm_id: str, name: str) -> str:
    return await sh(client, vm_id, f"strings {EFIVARS}/{name}-{VAR_GUID}")


async def uptime(client: Any, vm_id: str) -> float:
    return float((await sh(client, vm_id, "cat /proc/uptime")).split()[0])


async def migrate(client: Any, vm_id: str, body: dict[str, Any]) -> dict[str, Any]:
    status, moved = await post(client, f"/api/v1/vms/{vm_id}/migrate", body)
    assert status == 200, moved
    return moved


async def check_moved(
    client: Any, services: Services, vm_id: str, body: dict[str, Any]
) -> dict[str, Any]:
    """Migrate once and check everything that must have moved with the guest."""
    manager = services.manager
    before = manager.get(vm_id)
    paths = manager._paths(vm_id)
    old_tpm = tpm.TpmPaths.for_vm(paths)
    old_swtpm, old_passt = tpm.find(old_tpm), passt.find(passt.PasstPaths.for_vm(paths))
    assert before.pid is not None and old_swtpm is not None and old_passt is not None
    up_before = await uptime(client, vm_id)
    pcrs = await pcr0(client, vm_id)

    moved = await migrate(client, vm_id, body)

    vm = moved["vm"]
    assert vm["state"] == "running" and vm["pid"] != before.pid, vm
    assert moved["total_time_ms"] > 0 and moved["downtime_ms"] >= 0, moved
    assert moved["transferred_bytes"] > 0 and moved["node"] == services.settings.node_name
    assert process_gone(before.pid), "the old QEMU outlived the migration"
    assert qemu_pids_for({before.uuid}) == [vm["pid"]]
    assert manager._machine(vm_id).pid == vm["pid"]
    with open(paths.pidfile) as f:
        assert int(f.read()) == vm["pid"], "the VM's pidfile names the new QEMU"
    # Its own swtpm on its own state dir; the old one and its dir are gone.
    await wait_until(lambda: process_gone(old_swtpm), what="the old swtpm to exit")
    new_tpm = tpm.TpmPaths.for_vm(paths)
    assert new_tpm.state_dir != old_tpm.state_dir and not old_tpm.state_dir.exists()
    assert tpm.find(new_tpm) not in (None, old_swtpm)
    # A new passt on the same forwarded port.
    new_passt = passt.find(passt.PasstPaths.for_vm(paths))
    assert new_passt not in (None, old_passt) and process_gone(old_passt)
    forward = before.network_info.forwards[0] if before.network_info else None
    assert forward is not None and not port_free("127.0.0.1", forward.host_port, "tcp")
    # The guest did not reboot and kept its RAM and its TPM's state.
    assert await uptime(client, vm_id) >= up_before
    assert await sh(client, vm_id, "cat /tmp/marker") == "kept in RAM\n"
    assert await pcr0(client, vm_id) == pcrs
    assert await read_var(client, vm_id, "HmBefore") == "hmvars-before\n"
    leftovers = list(services.settings.runtime_dir.glob(f"{vm_id}.m*"))
    assert leftovers == [], leftovers
    assert not (paths.run_dir / migration.COMMITTED).exists(), "a stale commit marker"
    return moved


def check_restart_leftovers(services: Services, vm_id: str) -> None:
    """What a server killed mid-migration leaves (an uncommitted destination's run dir
    and TPM dir) is removed at recovery; the VM's own QEMU and TPM stay."""
    manager = services.manager
    paths = manager._paths(vm_id)
    current = tpm.state_dir_of(paths.vm_dir)
    stray = migration.destination(paths, "0badc0de")
    stray.run_dir.mkdir(mode=0o700)
    (stray.run_dir / "qemu.pid").write_text("1\n")  # not this VM's QEMU: never killed
    (paths.vm_dir / "tpm-0badc0de").mkdir()
    pid = manager.get(vm_id).pid
    assert manager.migrations.recover(manager.get(vm_id)) is True
    assert not stray.run_dir.exists() and not (paths.vm_dir / "tpm-0badc0de").exists()
    assert tpm.state_dir_of(paths.vm_dir) == current and current.is_dir()
    assert pid is not None and not process_gone(pid)
    assert manager.migrations.recover(manager.get(vm_id)) is False


async def check_refusals(client: Any, services: Services, vm_id: str) -> None:
    status, got = await post(client, f"/api/v1/vms/{vm_id}/migrate", {"node": "elsewhere"})
    assert (status, got["error"]["code"]) == (404, "NODE_NOT_FOUND"), got
    status, got = await post(client, f"/api/v1/vms/{vm_id}/migrate", {"node": "Not A Node"})
    assert (status, got["error"]["code"]) == (400, "VALIDATION_ERROR"), got
    machine = services.manager._machine(vm_id)
    real = machine.session
    machine.session = VfioQmp(real)  # type: ignore[assignment]
    try:
        status, got = await post(client, f"/api/v1/vms/{vm_id}/migrate", {})
    finally:
        machine.session = real
    assert (status, got["error"]["code"]) == (409, "MIGRATION_REFUSED"), got
    assert got["error"]["details"]["reasons"] == [VFIO_REASON]
    assert services.manager._machine(vm_id) is machine, "a refusal must not touch the VM"


@pytest.mark.usefixtures("efi_image")
async def test_a_running_guest_moves_to_a_fresh_qemu(client: Any, services: Services) -> None:
    body = {"name": "mover", **TINY, "image": "tiny-efi", "start": True, "wait": True,
            "security": {"vtpm": True},
            "network": {"ports": [{"host": free_port(), "guest": 22}]}}  # fmt: skip
    status, vm = await post(client, "/api/v1/vms", body)
    assert (status, vm["state"], vm["firmware"]) == (201, "running", "uefi"), vm
    vm_id = vm["id"]
    await sh(client, vm_id, "echo 'kept in RAM' > /tmp/marker")
    await write_var(client, vm_id, "HmBefore", "hmvars-before")

    await check_refusals(client, services, vm_id)
    first = await check_moved(client, services, vm_id, {})
    second = await check_moved(client, services, vm_id, {"node": services.settings.node_name})
    assert second["vm"]["pid"] != first["vm"]["pid"]
    check_restart_leftovers(services, vm_id)
    # The destination owns the VM's VARS file: what the guest writes now lands there.
    await write_var(client, vm_id, "HmAfter", "hmvars-after")
    assert b"hmvars-after" in vars_file(services.manager._paths(vm_id)).read_bytes()

    done = [s for s in steps(services, vm_id) if s["step"] == "completed"]
    assert len(done) == 2 and all(s["downtime_ms"] >= 0 < s["total_time_ms"] for s in done)
    assert [s["step"] for s in steps(services, vm_id)][:3] == [
        "started", "destination_ready", "completed"
    ]  # fmt: skip

    stopped = await post(client, f"/api/v1/vms/{vm_id}/stop", {"force": True, "wait": True})
    assert stopped[0] == 200, stopped
    status, got = await post(client, f"/api/v1/vms/{vm_id}/migrate", {})
    assert (status, got["error"]["code"]) == (409, "INVALID_STATE"), got
    assert process_gone(second["vm"]["pid"])


def test_a_confidential_vm_is_refused() -> None:
    vm = Vm.model_validate(
        {"name": "sev", "image": "tiny", "id": "vm-1",
         "uuid": "00000000-0000-4000-8000-000000000001", "state": "running",
         "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
         "firmware": "uefi", "security": {"memory_encryption": "sev"}}
    )  # fmt: skip
    with pytest.raises(MigrationRefused) as refused:
        refuse(vm, [])
    assert refused.value.details["reasons"] == ["memory_encryption sev"]
