"""A VM's firmware, vTPM and memory encryption: the hooks the manager calls.

* :func:`resolve_firmware` — at create, the spec's ``firmware`` defaults to the
  image's, or ``uefi`` when secure boot or memory encryption is asked for.
* :func:`security_notes` — what the VM's protections do *not* cover, shown with it.
* :func:`prepare` — at create: the VM's own copy of the VARS template, the TPM state.
* :func:`launch_platform` — before QEMU starts: swtpm started, paths and SEV/TDX
  numbers resolved into a :class:`~.cmdline.Platform` for the argv builder.
* :func:`after_exit` / :func:`adopt` — swtpm stopped after QEMU, re-found on restart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ...config import Settings
from ...errors import NotConfidential, Unsupported
from ...models import CreateVmRequest, FirmwareSet, Vm, VmSpec
from ..qemu import qmp_commands
from ..qemu.argv import BootSource, Confidential, Platform
from ..vmfiles import nofollow
from ..vmfiles.confine import QemuIdentity
from ..vmfiles.layout import VmPaths
from . import tpm
from .firmware import firmware_for_confidential, pick
from .host import HostFacts

__all__ = [
    "DEFAULT_POLICY",
    "adopt",
    "after_exit",
    "firmware_of",
    "launch_platform",
    "prepare",
    "resolve_firmware",
    "security_notes",
    "vars_file",
]

log = logging.getLogger(__name__)

# Safe defaults: no debugging (bit 0); SEV-ES adds bit 2; SNP: bit 17 (must be one)
# and bit 16 (SMT allowed, as on most hosts).
DEFAULT_POLICY = {"sev": 0x1, "sev_es": 0x5, "sev_snp": 0x30000}


def vars_file(paths: VmPaths) -> Path:
    """The VM's own UEFI variable store (deleted with the VM dir)."""
    return paths.vm_dir / "efivars.fd"


def firmware_of(vm: VmSpec) -> str:
    if vm.firmware is not None:
        return vm.firmware
    wants_uefi = vm.security.secure_boot or vm.security.memory_encryption != "none"
    return "uefi" if wants_uefi else "bios"


def resolve_firmware(request: CreateVmRequest, image_firmware: str) -> CreateVmRequest:
    """``request`` with ``firmware`` filled in: the client's, else what security needs,
    else the image's default."""
    if request.firmware is not None:
        return request
    needed = firmware_of(request)
    return request.model_copy(update={"firmware": needed if needed == "uefi" else image_firmware})


def security_notes(vm: VmSpec, *, direct_kernel: bool) -> list[str]:
    """Plain statements of what this VM's protections leave out."""
    notes = []
    if vm.security.secure_boot and direct_kernel:
        notes.append(
            "secure boot does not verify this VM's kernel or initrd: the image boots them "
            "directly (QEMU -kernel), so the firmware checks no signature; only disk-booted "
            "images get a verified boot chain"
        )
    if vm.security.vtpm:
        notes.append(
            "the vTPM's state is kept unencrypted in the server's data directory; whoever "
            "administers this host can read it"
        )
    return notes


def _firmware_set(vm: VmSpec, host: HostFacts) -> FirmwareSet | None:
    """The firmware this VM boots with; None for SeaBIOS.

    Raises:
        Unsupported: the host has no firmware of the kind the VM needs.
    """
    kind = vm.firmware_kind() or "bios"
    if kind == "bios":
        return None
    variant = vm.security.memory_encryption
    sets = host.capabilities.firmware if host.capabilities else []
    found = firmware_for_confidential(sets, variant) if kind == "confidential" else pick(sets, kind)
    if found is None:
        raise Unsupported(
            "this host has no firmware for this VM",
            unsupported={"firmware": f"no firmware for {variant if variant != 'none' else 'UEFI'}"},
        )
    return found


def _ensure_vars(fw: FirmwareSet | None, paths: VmPaths) -> Path | None:
    """The VM's VARS file, copied from the template once (never through a symlink: the
    VM's folder may be the QEMU user's by now; an existing name is left to QEMU)."""
    if fw is None or fw.device != "flash" or fw.vars_template is None:
        return None
    target = vars_file(paths)
    paths.vm_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not nofollow.exists(target):
        nofollow.write_file(target, Path(fw.vars_template).read_bytes(), 0o600)
    return target


def _hand_over(paths: VmPaths, identity: QemuIdentity | None) -> None:
    """Give the VM's folders to the QEMU user before swtpm runs as that user."""
    paths.make()
    if identity is not None:
        identity.own(paths.vm_dir, paths.run_dir)


async def prepare(
    vm: Vm, paths: VmPaths, host: HostFacts, settings: Settings, identity: QemuIdentity | None
) -> None:
    """At create: the VM's VARS copy and TPM state (made by ``identity``).

    Raises:
        Unsupported, HypervisorError (swtpm_setup failed).
    """
    _ensure_vars(_firmware_set(vm, host), paths)
    if vm.security.vtpm:
        _hand_over(paths, identity)
        await tpm.setup(tpm.TpmPaths.for_vm(paths), settings, identity)


def _confidential(vm: Vm, boot: BootSource, host: HostFacts) -> Confidential | None:
    variant = vm.security.memory_encryption
    if variant == "none":
        return None
    if variant == "tdx":
        return Confidential(variant="tdx")
    sev = host.capabilities.sev if host.capabilities else None
    if sev is None:
        raise Unsupported(
            "the host reports no SEV capabilities",
            unsupported={"security.memory_encryption": "query-sev-capabilities gave nothing"},
        )
    policy = vm.security.policy
    return Confidential(
        variant=variant,
        cbitpos=sev.cbitpos,
        reduced_phys_bits=sev.reduced_phys_bits,
        policy=DEFAULT_POLICY[variant] if policy is None else policy,
        kernel_hashes=boot.kernel is not None,
    )


async def launch_platform(
    vm: Vm,
    boot: BootSource,
    paths: VmPaths,
    host: HostFacts,
    settings: Settings,
    identity: QemuIdentity | None,
    *,
    incoming_tpm: Path | None = None,
) -> Platform:
    """Everything firmware/TPM/SEV-shaped QEMU needs; starts the VM's swtpm (as ``identity``).
    ``incoming_tpm``: a migration's destination, whose swtpm gets this empty state dir
    (the state comes in QEMU's stream).

    Raises:
        Unsupported, HypervisorError (swtpm would not start).
    """
    fw = _firmware_set(vm, host)
    confidential = _confidential(vm, boot, host)
    vars_path = _ensure_vars(fw, paths)
    socket = None
    if vm.security.vtpm:
        tpm_paths = tpm.TpmPaths.for_vm(paths, incoming_tpm)
        _hand_over(paths, identity)
        pid = await tpm.start(tpm_paths, settings, identity, incoming=incoming_tpm is not None)
        log.info("%s: swtpm pid %d", vm.id, pid)
        socket = tpm_paths.socket
    stateless = fw is not None and fw.device == "memory"
    return Platform(
        firmware_code=Path(fw.code) if fw and fw.code and not stateless else None,
        firmware_vars=vars_path,
        firmware_bios=Path(fw.code) if fw and fw.code and stateless else None,
        secure_boot=vm.security.secure_boot,
        tpm_socket=socket,
        confidential=confidential,
    )


def after_exit(paths: VmPaths) -> None:
    """QEMU has exited (or is gone): end the VM's swtpm if it is still there."""
    tpm.stop(tpm.TpmPaths.for_vm(paths))


def adopt(vm: Vm, paths: VmPaths) -> None:
    """On re-adoption, find the VM's swtpm again (it lives as long as QEMU does)."""
    if not vm.security.vtpm:
        return
    pid = tpm.find(tpm.TpmPaths.for_vm(paths))
    if pid is None:
        log.warning("%s: its swtpm is gone; the guest's TPM will fail", vm.id)
    else:
        log.info("%s: re-adopted swtpm pid %d", vm.id, pid)


async def attestation(vm: Vm, machine: Callable[[], qmp_commands.Target]) -> dict[str, object]:
    """What QEMU reports about ``vm``'s memory encryption, for an attesting client.

    SEV/SEV-ES: the platform state and the launch measurement; SNP: the state (its
    reports are requested from inside the guest); TDX: nothing over QMP (quotes come
    from the guest's TDG.MR.REPORT), which the answer says.

    Raises:
        NotConfidential: the VM runs without memory encryption.
    """
    kind = vm.security.memory_encryption
    if kind == "none":
        raise NotConfidential(
            "this VM runs without memory encryption; there is nothing to attest",
            memory_encryption=kind,
        )
    report: dict[str, object] = {"vm_id": vm.id, "memory_encryption": kind}
    report.update(await qmp_commands.attestation_queries(machine, kind))
    if kind in ("sev_snp", "tdx"):
        report["note"] = (
            "attestation reports for this variant are requested from inside the guest "
            "(SNP_GET_REPORT / TDG.MR.REPORT); QEMU does not produce them"
        )
    return report
