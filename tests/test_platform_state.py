"""A VM's platform state — RAM, vTPM, UEFI variables — follows it through snapshots and
live migrations, for real: one ``tiny-efi`` guest on plain OVMF (no secure boot: the
guest reports ``SecureBoot`` 0) with a swtpm of its own and a NAT port forward
(docs/snapshots.md, docs/cluster.md). One guest serves every step, since each OVMF
boot costs half a minute of TCG.

Snapshots. The guest extends PCR 16 (the debug PCR, zero at boot) with a raw
``TPM2_PCR_Extend`` written to ``/dev/tpm0`` and reads it in
``/sys/class/tpm/tpm0/pcr-sha256/16`` (the expected values are computed here), and
writes a UEFI variable through efivarfs, which OVMF stores in the VM's
``efivars.fd``. A memory snapshot brings both back as they were; a disk-only snapshot
taken before the first boot brings back the VARS and TPM files byte for byte.

Migration to a fresh QEMU on the same host, twice (the first from the QEMU a restore
started): the guest's uptime keeps counting, a file in its tmpfs survives, its TPM
answers with the same PCR, a UEFI variable written before is still there and one
written after lands in the VM's VARS file, the old QEMU, swtpm and passt are gone and
the new ones hold the VM's names.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from pathlib import Path
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
from hypermachine.hypervisor.vmfiles.layout import VmPaths
from hypermachine.models import ExecRequest, SnapshotRequest, Vm, VmState
from realserver import free_port
from support import post, process_gone, qemu_pids_for, sh, wait_until
from test_secure_boot import VAR_GUID, Console
from test_snapshots import TINY, VFIO_REASON, VfioQmp

pytestmark = pytest.mark.qemu

BOOT_S = 300.0  # OVMF + shim + GRUB + a bzImage under TCG on a busy 2-core host
# efivarfs makes every variable immutable except those of GUIDs it knows as removable;
# Linux's own crash-dump GUID (any name) is one, so the guest can rewrite the variable.
SNAP_VAR_GUID = "cfc8fc79-be2e-4ddc-97f0-9f98bfe298a0"
SNAP_VAR = f"/sys/firmware/efi/efivars/HmSnap-{SNAP_VAR_GUID}"
PCR = 16
PCR_FILE = f"/sys/class/tpm/tpm0/pcr-sha256/{PCR}"
MOUNT_EFIVARS = (
    "grep -q efivarfs /proc/mounts || mount -t efivarfs efivarfs /sys/firmware/efi/efivars"
)


def pcr_extend_command(digest: bytes) -> bytes:
    """TPM2_PCR_Extend(PCR 16, sha256 ``digest``) with an empty password session."""
    session = struct.pack(">IHBH", 0x40000009, 0, 0, 0)  # TPM_RS_PW, no nonce, no hmac
    body = (
        struct.pack(">II", PCR, len(session))
        + session
        + struct.pack(">IH", 1, 0x000B)  # one digest, TPM_ALG_SHA256
        + digest
    )
    return struct.pack(">HII", 0x8002, 10 + len(body), 0x00000182) + body


def extended(pcr: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(pcr + digest).digest()


async def guest(svc: Services, vm_id: str, script: str, stdin: bytes | None = None) -> str:
    request = ExecRequest(
        command=["sh", "-c", script],
        stdin_b64=base64.b64encode(stdin).decode() if stdin is not None else None,
        timeout_s=60,
    )
    result = await svc.manager.guest.exec(vm_id, request, wait_agent_s=BOOT_S)
    assert result.exit_code == 0 and result.stdout is not None, result
    return result.stdout


async def extend_pcr(svc: Services, vm_id: str, digest: bytes) -> bytes:
    """Extend PCR 16 from inside the guest; returns what the guest then reads."""
    command = pcr_extend_command(digest)
    script = "cat > /tmp/extend && cat /tmp/extend > /dev/tpm0 && cat " + PCR_FILE
    return bytes.fromhex((await guest(svc, vm_id, script, command)).strip())


async def read_pcr(svc: Services, vm_id: str) -> bytes:
    return bytes.fromhex((await guest(svc, vm_id, f"cat {PCR_FILE}")).strip())


async def write_snap_var(svc: Services, vm_id: str, value: str) -> None:
    # 4 attribute bytes (NV | BS | RT), then the data; efivarfs writes it in one go
    await guest(svc, vm_id, f"{MOUNT_EFIVARS}; printf '\\007\\000\\000\\000{value}' > {SNAP_VAR}")


async def read_snap_var(svc: Services, vm_id: str) -> str:
    """The variable's data, or "absent"."""
    script = (
        f"{MOUNT_EFIVARS}; if [ -e {SNAP_VAR} ]; then tail -c +5 {SNAP_VAR}; else printf absent; fi"
    )
    return await guest(svc, vm_id, script)


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
    assert status == 200 and isinstance(moved, dict), moved
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


async def check_restart_leftovers(services: Services, vm_id: str) -> None:
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
    assert await manager.migrations.recover(manager.get(vm_id)) is True
    assert not stray.run_dir.exists() and not (paths.vm_dir / "tpm-0badc0de").exists()
    assert tpm.state_dir_of(paths.vm_dir) == current and current.is_dir()
    assert pid is not None and not process_gone(pid)
    assert await manager.migrations.recover(manager.get(vm_id)) is False


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


async def check_snapshots(services: Services, vm_id: str, paths: VmPaths) -> None:
    """PCR 16 and a UEFI variable changed after a memory snapshot are back as they were
    once it is restored, in the guest and in the VARS file."""
    mgr = services.manager
    assert await read_pcr(services, vm_id) == bytes(32)  # zero at boot
    one, two = hashlib.sha256(b"one").digest(), hashlib.sha256(b"two").digest()
    at_snapshot = extended(bytes(32), one)
    assert await extend_pcr(services, vm_id, one) == at_snapshot
    await write_snap_var(services, vm_id, "hm-one")
    assert await read_snap_var(services, vm_id) == "hm-one"

    warm = await mgr.snapshot(vm_id, SnapshotRequest(name="warm", memory=True))
    assert warm.memory and warm.vm_state is VmState.RUNNING
    assert await extend_pcr(services, vm_id, two) == extended(at_snapshot, two)
    await write_snap_var(services, vm_id, "hm-two")
    assert await read_snap_var(services, vm_id) == "hm-two"
    assert b"hm-two" in vars_file(paths).read_bytes()  # OVMF wrote it to the VM's flash

    restored = await mgr.restore(vm_id, "warm", wait=True)
    assert restored.state is VmState.RUNNING
    # The TPM is the snapshot's (the extension after it is gone), and so is the VARS
    # store, in the guest and in the VM's file that the next boot reads.
    assert await read_pcr(services, vm_id) == at_snapshot
    assert await read_snap_var(services, vm_id) == "hm-one"
    flash = vars_file(paths).read_bytes()
    assert b"hm-one" in flash and b"hm-two" not in flash


async def check_migrations(client: Any, services: Services, vm_id: str) -> None:
    await sh(client, vm_id, "echo 'kept in RAM' > /tmp/marker")
    await write_var(client, vm_id, "HmBefore", "hmvars-before")
    await check_refusals(client, services, vm_id)
    first = await check_moved(client, services, vm_id, {})
    second = await check_moved(client, services, vm_id, {"node": services.settings.node_name})
    assert second["vm"]["pid"] != first["vm"]["pid"]
    await check_restart_leftovers(services, vm_id)
    # The destination owns the VM's VARS file: what the guest writes now lands there.
    await write_var(client, vm_id, "HmAfter", "hmvars-after")
    assert b"hmvars-after" in vars_file(services.manager._paths(vm_id)).read_bytes()

    done = [s for s in steps(services, vm_id) if s["step"] == "completed"]
    assert len(done) == 2 and all(s["downtime_ms"] >= 0 < s["total_time_ms"] for s in done)
    assert [s["step"] for s in steps(services, vm_id)][:3] == [
        "started", "destination_ready", "completed"
    ]  # fmt: skip


@pytest.mark.usefixtures("efi_image")
async def test_platform_state_follows_snapshots_and_migrations(
    client: Any, services: Services
) -> None:
    mgr = services.manager
    body = {"name": "platform", **TINY, "image": "tiny-efi", "security": {"vtpm": True},
            "network": {"ports": [{"host": free_port(), "guest": 22}]}}  # fmt: skip
    status, created = await post(client, "/api/v1/vms", body)
    assert (status, created["firmware"]) == (201, "uefi"), created
    vm = await mgr.wait_for(created["id"], {VmState.STOPPED}, 120)
    assert vm.security.vtpm and not vm.security.secure_boot
    paths = VmPaths.for_vm(services.settings.vms_dir, services.settings.runtime_dir, vm.id)

    def tpm_state() -> Path:  # a migration moves the TPM to a state dir of its own
        return tpm.TpmPaths.for_vm(paths).state_dir / "tpm2-00.permall"

    # Before the first boot: a disk-only snapshot holds the pristine VARS and TPM state.
    fresh = await mgr.snapshot(vm.id, SnapshotRequest(name="fresh", memory=True))
    assert not fresh.memory
    fresh_vars, fresh_tpm = vars_file(paths).read_bytes(), tpm_state().read_bytes()

    await mgr.start(vm.id)
    console = Console(services, vm.id)
    await console.wait_for("HM-READY tiny", timeout=BOOT_S)
    assert "HM-SECUREBOOT=0" in console.text()  # plain OVMF boots the signed chain
    await check_snapshots(services, vm.id, paths)
    await check_migrations(client, services, vm.id)

    pid = mgr.get(vm.id).pid
    stopped = await post(client, f"/api/v1/vms/{vm.id}/stop", {"force": True, "wait": True})
    assert stopped[0] == 200, stopped
    status, got = await post(client, f"/api/v1/vms/{vm.id}/migrate", {})
    assert (status, got["error"]["code"]) == (409, "INVALID_STATE"), got
    assert pid is not None and process_gone(pid)

    # Back to before the first boot: the files are the pristine ones, byte for byte
    # (the VARS store the first boot found, without any variable the guest wrote).
    assert (vars_file(paths).read_bytes(), tpm_state().read_bytes()) != (fresh_vars, fresh_tpm)
    back = await mgr.restore(vm.id, "fresh", wait=True)
    assert back.state is VmState.STOPPED
    assert vars_file(paths).read_bytes() == fresh_vars
    assert tpm_state().read_bytes() == fresh_tpm
    assert b"hm-one" not in vars_file(paths).read_bytes()


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
