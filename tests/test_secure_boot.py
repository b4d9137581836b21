"""Secure boot and vTPM for real: OVMF under TCG, Debian's signed boot chain, swtpm.

The ``tiny-efi`` image (``tools/build-efi-image``) is a FAT ESP with Microsoft-signed
shim, Debian-signed GRUB and the Debian-signed kernel; its initramfs prints
``HM-SECUREBOOT=<SecureBoot efivar>`` before the tiny guest's ``HM-READY tiny``.
Its twin ``esp-unsigned.qcow2`` has shim's signature stripped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

import guestconsole
from guestconsole import PROMPT, console_text, vm_paths
from hypermachine.api import Services
from hypermachine.config import Settings
from hypermachine.hypervisor.platform import tpm
from hypermachine.hypervisor.platform.vmplatform import vars_file
from hypermachine.hypervisor.vmfiles.layout import VmPaths
from hypermachine.models import CreateVmRequest, NetworkSpec, SecuritySpec, VmState
from hypermachine.server import open_services
from support import REPO, make_settings, process_gone, qemu_pids_for, remove_all_vms, wait_until

pytestmark = pytest.mark.qemu

BOOT_S = 240.0  # OVMF + shim + GRUB + a bzImage under TCG on a busy 2-core host (~40 s idle)
MS_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
VAR_GUID = "3f6c2a5e-1b7d-4c9e-8f10-2a3b4c5d6e7f"


@pytest.fixture
def settings(data_dir: Path, compile_cache: Path, tmp_path: Path) -> Settings:
    """The repository's catalogue plus ``tiny-efi-unsigned`` (the stripped shim)."""
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(
        (REPO / "images" / "catalogue.toml").read_text()
        + '\n[[image]]\nname = "tiny-efi-unsigned"\ndescription = "shim without signature"\n'
        'os = "linux"\nboot = "disk"\nformat = "qcow2"\nfirmware = "uefi"\n'
        'dir = "tiny-efi"\ndisk = "esp-unsigned.qcow2"\n'
    )
    return make_settings(
        data_dir,
        compile_cache,
        stop_timeout_s=30.0,
        qmp_connect_timeout_s=30.0,
        catalogue_file=catalogue,
        builtin_images_dir=REPO / "images",
    )


class Console:
    """The VM's serial console log, and typing into the guest's shell.

    The server rotates the log when the VM starts, so a mark is (file, length): text
    "since" a mark in another file is all of that file.
    """

    def __init__(self, services: Services, vm_id: str) -> None:
        self.services = services
        self.vm_id = vm_id
        self.log = vm_paths(services, vm_id).console_log

    def text(self) -> str:
        return console_text(self.services, self.vm_id)

    def _inode(self) -> int | None:
        try:
            return self.log.stat().st_ino
        except FileNotFoundError:
            return None

    def mark(self) -> tuple[int | None, int]:
        return self._inode(), len(self.text())

    def _since(self, mark: tuple[int | None, int]) -> str:
        inode, length = mark
        return self.text()[length:] if self._inode() == inode else self.text()

    async def wait_for(
        self, *needles: str, since: tuple[int | None, int] = (None, 0), timeout: float = BOOT_S
    ) -> None:
        """Wait until the text since ``since`` shows ``needles``, each after the one before."""

        def found() -> bool:
            text, start = self._since(since), 0
            for needle in needles:
                at = text.find(needle, start)
                if at < 0:
                    return False
                start = at + len(needle)
            return True

        try:
            await wait_until(found, timeout=timeout, what=" then ".join(needles))
        except AssertionError as missing:
            tail = self._since(since)[-2000:]
            raise AssertionError(f"{missing}; the console since: {tail!r}") from None

    async def run(self, command: str, answer: str, timeout: float = 120) -> None:
        """Type ``command`` on the guest's shell; wait for ``answer`` and the next prompt."""
        since = self.mark()
        async with guestconsole.console(self.services, self.vm_id) as shell:
            await shell.type(command)
            await self.wait_for(answer, PROMPT, since=since, timeout=timeout)


@pytest.fixture
def svc(efi_image: Path, services: Services) -> Services:
    """The shared ``services`` fixture (it leaves no QEMU behind), once the EFI image exists."""
    return services


def swtpm_pids(state_dir: Path) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("status") != psutil.STATUS_ZOMBIE and any(
            str(state_dir) in arg for arg in cmdline
        ):
            found.append(proc.info["pid"])
    return found


async def boot(services: Services, name: str, image: str, **security: Any) -> tuple[Any, VmPaths]:
    created = await services.manager.create(
        CreateVmRequest(
            name=name,
            image=image,
            memory_mb=512,
            disk_gb=1,
            network=NetworkSpec(type="none"),
            security=SecuritySpec(**security),
            start=True,
        )
    )
    vm = await services.manager.wait_for(created.vm.id, {VmState.RUNNING}, 120)
    settings = services.settings
    return vm, VmPaths.for_vm(settings.vms_dir, settings.runtime_dir, vm.id)


async def test_secure_boot_and_vtpm_survive_vm_and_server_restarts(
    svc: Services, settings: Settings
) -> None:
    vm, paths = await boot(svc, "sb-tpm", "tiny-efi", secure_boot=True, vtpm=True)
    assert vm.firmware == "uefi"
    assert vm.security_notes and "unencrypted" in vm.security_notes[0]  # no -kernel caveat
    tpm_paths = tpm.TpmPaths.for_vm(paths)
    console = Console(svc, vm.id)
    await console.wait_for("HM-SECUREBOOT=1", PROMPT)
    assert "HM-SECUREBOOT=0" not in console.text()

    # its own VARS, copied from the Microsoft-enrolled template, in the VM's dir
    assert vars_file(paths).stat().st_size == MS_VARS.stat().st_size
    machine = svc.manager._machine(vm.id)
    tpms = await machine.execute("query-tpm")
    assert isinstance(tpms, list) and len(tpms) == 1, tpms
    assert tpms[0]["model"] == "tpm-crb" and tpms[0]["options"]["type"] == "emulator"
    await console.run("echo HM-TPM=$(cat /sys/class/tpm/tpm0/tpm_version_major)", "HM-TPM=2")

    # a UEFI variable written by the guest lands in the VM's own VARS file
    var = f"/sys/firmware/efi/efivars/HmTest-{VAR_GUID}"
    await console.run(
        "mount -t efivarfs efivarfs /sys/firmware/efi/efivars; "
        f"printf '\\007\\000\\000\\000hmvars42' > {var}; echo HM-WROTE=$?",
        "HM-WROTE=0",
    )
    swtpm_pid = tpm.find(tpm_paths)
    assert swtpm_pid is not None

    # VM restart: swtpm goes with QEMU; VARS and TPM state stay
    await svc.manager.stop(vm.id)
    stopped = await svc.manager.wait_for(vm.id, {VmState.STOPPED}, 90)
    assert stopped.state_reason == "the guest powered off (ACPI)"
    await wait_until(lambda: process_gone(swtpm_pid), what="swtpm to exit with QEMU")
    assert swtpm_pids(tpm_paths.state_dir) == []
    assert (tpm_paths.state_dir / "tpm2-00.permall").is_file()

    since = console.mark()
    await svc.manager.start(vm.id)
    await svc.manager.wait_for(vm.id, {VmState.RUNNING}, 120)
    await console.wait_for("HM-SECUREBOOT=1", PROMPT, since=since)
    await console.run(
        f"mount -t efivarfs efivarfs /sys/firmware/efi/efivars; echo HM-VAR=$(strings {var})",
        "HM-VAR=hmvars42",
    )
    await console.run("echo HM-TPM=$(cat /sys/class/tpm/tpm0/tpm_version_major)", "HM-TPM=2")
    manufactured = tpm_paths.log.read_text().count("Starting vTPM manufacturing")
    assert manufactured == 1, "swtpm_setup must run once, at create"
    pids = (svc.manager.get(vm.id).pid, tpm.find(tpm_paths))
    assert None not in pids


async def test_server_restart_readopts_swtpm(settings: Settings, efi_image: Path) -> None:
    async with open_services(settings) as first:
        vm, paths = await boot(first, "tpm-keeper", "tiny-efi", secure_boot=True, vtpm=True)
    tpm_paths = tpm.TpmPaths.for_vm(paths)
    swtpm_pid = tpm.find(tpm_paths)

    # (re-adoption only looks for swtpm: it never starts one)
    async with open_services(settings) as second:
        try:
            assert swtpm_pid is not None, "swtpm must outlive the server, like QEMU"
            assert vm.pid is not None and psutil.pid_exists(vm.pid)
            again = second.manager.get(vm.id)
            assert (again.state, again.pid) == (VmState.RUNNING, vm.pid)
            assert tpm.find(tpm_paths) == swtpm_pid
            tpms = await second.manager._machine(vm.id).execute("query-tpm")
            assert isinstance(tpms, list) and tpms[0]["model"] == "tpm-crb"
            await second.manager.delete(vm.id, force=True)
            assert not paths.vm_dir.exists()  # VARS and TPM state went with it
            await wait_until(lambda: process_gone(swtpm_pid), what="swtpm to exit")
        finally:
            with trio.CancelScope(shield=True):
                uuids = await remove_all_vms(second)
    assert qemu_pids_for(uuids | {vm.uuid}) == []
    assert swtpm_pids(tpm_paths.state_dir) == []


async def test_unsigned_shim_is_refused_by_the_firmware(svc: Services) -> None:
    vm, _ = await boot(svc, "unsigned", "tiny-efi-unsigned", secure_boot=True)
    console = Console(svc, vm.id)
    # OVMF tries the disk, refuses it, finds nothing else to boot and says so.
    await console.wait_for("No bootable option or device was found", timeout=BOOT_S)
    text = console.text()
    assert 'failed to load Boot0001 "UEFI Misc Device"' in text
    assert "Access Denied" in text
    assert "Welcome to GRUB" not in text and "HM-READY" not in text
