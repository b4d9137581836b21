"""The vTPM and the UEFI variable store are part of a snapshot, for real: the ``tiny-efi``
guest on OVMF with a swtpm of its own (docs/snapshots.md).

What the guest changes, and how it is read back:

* the TPM: the guest extends PCR 16 (the debug PCR, zero at boot) with a raw
  ``TPM2_PCR_Extend`` written to ``/dev/tpm0`` and reads it in
  ``/sys/class/tpm/tpm0/pcr-sha256/16``; the expected values are computed here;
* the VARS: the guest writes a UEFI variable through efivarfs (the image's initramfs
  loads the module); OVMF stores it in the VM's ``efivars.fd``.

A memory snapshot brings both back as they were in the guest; a disk-only snapshot of
the VM before its first boot brings back the VARS and TPM files byte for byte, and the
next boot no longer sees the variable.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from pathlib import Path

import pytest

from hypermachine.api import Services
from hypermachine.hypervisor.platform import tpm
from hypermachine.hypervisor.platform.vmplatform import vars_file
from hypermachine.hypervisor.vmfiles.layout import VmPaths
from hypermachine.models import (
    CreateVmRequest,
    ExecRequest,
    SecuritySpec,
    SnapshotRequest,
    VmState,
)

pytestmark = pytest.mark.qemu

BOOT_S = 300.0  # OVMF + shim + GRUB + a bzImage under TCG on a busy 2-core host
# efivarfs makes every variable immutable except those of GUIDs it knows as removable;
# Linux's own crash-dump GUID (any name) is one, so the guest can rewrite the variable.
VAR_GUID = "cfc8fc79-be2e-4ddc-97f0-9f98bfe298a0"
VAR = f"/sys/firmware/efi/efivars/HmSnap-{VAR_GUID}"
PCR = 16
PCR_FILE = f"/sys/class/tpm/tpm0/pcr-sha256/{PCR}"
EFIVARS = "grep -q efivarfs /proc/mounts || mount -t efivarfs efivarfs /sys/firmware/efi/efivars"


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
    assert result.exit_code == 0, result
    return result.stdout


async def extend_pcr(svc: Services, vm_id: str, digest: bytes) -> bytes:
    """Extend PCR 16 from inside the guest; returns what the guest then reads."""
    command = pcr_extend_command(digest)
    script = "cat > /tmp/extend && cat /tmp/extend > /dev/tpm0 && cat " + PCR_FILE
    return bytes.fromhex((await guest(svc, vm_id, script, command)).strip())


async def read_pcr(svc: Services, vm_id: str) -> bytes:
    return bytes.fromhex((await guest(svc, vm_id, f"cat {PCR_FILE}")).strip())


async def write_var(svc: Services, vm_id: str, value: str) -> None:
    # 4 attribute bytes (NV | BS | RT), then the data; efivarfs writes it in one go
    await guest(svc, vm_id, f"{EFIVARS}; printf '\\007\\000\\000\\000{value}' > {VAR}")


async def read_var(svc: Services, vm_id: str) -> str:
    """The variable's data, or "absent"."""
    script = f"{EFIVARS}; if [ -e {VAR} ]; then tail -c +5 {VAR}; else printf absent; fi"
    return await guest(svc, vm_id, script)


async def test_vtpm_and_uefi_vars_are_part_of_a_snapshot(
    efi_image: Path, services: Services
) -> None:
    mgr = services.manager
    created = await mgr.create(
        CreateVmRequest(
            name="platform",
            image="tiny-efi",
            memory_mb=512,
            disk_gb=1,
            network={"type": "none"},
            security=SecuritySpec(vtpm=True),
        )
    )
    vm = await mgr.wait_for(created.vm.id, {VmState.STOPPED}, 120)
    assert vm.firmware == "uefi" and vm.security.vtpm
    paths = VmPaths.for_vm(services.settings.vms_dir, services.settings.runtime_dir, vm.id)
    tpm_state = tpm.TpmPaths.for_vm(paths).state_dir / "tpm2-00.permall"

    # Before the first boot: a disk-only snapshot holds the pristine VARS and TPM state.
    fresh = await mgr.snapshot(vm.id, SnapshotRequest(name="fresh", memory=True))
    assert not fresh.memory
    fresh_vars, fresh_tpm = vars_file(paths).read_bytes(), tpm_state.read_bytes()

    await mgr.start(vm.id)
    await mgr.wait_for(vm.id, {VmState.RUNNING}, 120)
    assert await read_pcr(services, vm.id) == bytes(32)  # zero at boot
    one, two = hashlib.sha256(b"one").digest(), hashlib.sha256(b"two").digest()
    at_snapshot = extended(bytes(32), one)
    assert await extend_pcr(services, vm.id, one) == at_snapshot
    await write_var(services, vm.id, "hm-one")
    assert await read_var(services, vm.id) == "hm-one"

    warm = await mgr.snapshot(vm.id, SnapshotRequest(name="warm", memory=True))
    assert warm.memory and warm.vm_state is VmState.RUNNING
    assert await extend_pcr(services, vm.id, two) == extended(at_snapshot, two)
    await write_var(services, vm.id, "hm-two")
    assert await read_var(services, vm.id) == "hm-two"
    assert b"hm-two" in vars_file(paths).read_bytes()  # OVMF wrote it to the VM's flash

    restored = await mgr.restore(vm.id, "warm", wait=True)
    assert restored.state is VmState.RUNNING
    # The TPM is the snapshot's (the extension after it is gone), and so is the VARS
    # store, in the guest and in the VM's file that the next boot reads.
    assert await read_pcr(services, vm.id) == at_snapshot
    assert await read_var(services, vm.id) == "hm-one"
    flash = vars_file(paths).read_bytes()
    assert b"hm-one" in flash and b"hm-two" not in flash

    # Back to before the first boot: the files are the pristine ones, byte for byte
    # (the VARS store the first boot found, without any variable the guest wrote).
    await mgr.stop(vm.id, force=True)
    await mgr.wait_for(vm.id, {VmState.STOPPED}, 60)
    assert (vars_file(paths).read_bytes(), tpm_state.read_bytes()) != (fresh_vars, fresh_tpm)
    stopped = await mgr.restore(vm.id, "fresh", wait=True)
    assert stopped.state is VmState.STOPPED
    assert vars_file(paths).read_bytes() == fresh_vars
    assert tpm_state.read_bytes() == fresh_tpm
    assert b"hm-one" not in vars_file(paths).read_bytes()
