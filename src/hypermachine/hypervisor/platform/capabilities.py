"""The host capability map: what a VM on this host may ask for, and why not.

Each capability is computed from what the host itself says, never from version
numbers:

* the kernel: ``/sys/module/kvm_amd/parameters/{sev,sev_es,sev_snp}``,
  ``/sys/module/kvm_intel/parameters/tdx``, ``/dev/sev``, IOMMU groups, vfio;
* QEMU: a short-lived probe QEMU (``-machine none -qmp stdio``) answers
  ``qom-list-types`` (does this build have ``sev-guest``, ``sev-snp-guest``,
  ``tdx-guest``, ``tpm-crb``?) and ``query-sev-capabilities`` (C-bit position);
* firmware descriptors (:mod:`.firmware`) and the ``swtpm`` binaries.

:func:`probe_capabilities` is synchronous (run it on a worker thread); every
filesystem root is a parameter so tests give it a fake sysfs tree, and
:func:`parse_qmp_replies` turns QMP answers into facts, so tests give it fake ones.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil
import trio

from ...config import Settings
from ...models import Capability, CapabilityMap, FirmwareSet, HostCapabilities, SevCapabilities
from ..devices import pci
from ..qemu import qmp_commands
from ..qemu.argv import probe_argv
from . import binaries
from .firmware import (
    CONFIDENTIAL_FEATURES,
    DESCRIPTOR_DIRS,
    find_firmware,
    firmware_for_confidential,
    pick,
)
from .host import HostFacts

__all__ = [
    "RELEVANT_TYPES",
    "QemuProbe",
    "SwtpmProbe",
    "parse_qmp_replies",
    "probe_capabilities",
    "probe_qemu",
    "probe_swtpm",
    "refresh",
]

RELEVANT_TYPES = frozenset(
    {"sev-guest", "sev-snp-guest", "tdx-guest", "tpm-crb", "tpm-tis", "tpm-emulator",
     "memory-backend-memfd"}
)  # fmt: skip
_QOM_TYPE = {"sev": "sev-guest", "sev_es": "sev-guest", "sev_snp": "sev-snp-guest"}


@dataclass(frozen=True)
class QemuProbe:
    """What the probe QEMU answered."""

    types: frozenset[str] = frozenset()
    sev: SevCapabilities | None = None
    sev_error: str | None = None
    failure: str | None = None  # the probe itself failed: why


@dataclass(frozen=True)
class SwtpmProbe:
    version: str | None
    reason: str  # what was found, or what is missing


@dataclass(frozen=True)
class _Facts:
    """Everything the capability map is computed from."""

    accelerator: str
    accelerator_reason: str
    qemu: QemuProbe
    swtpm: SwtpmProbe
    firmware: Sequence[FirmwareSet]
    sysfs_root: Path
    dev_root: Path


# -- probing QEMU --------------------------------------------------------------


def parse_qmp_replies(replies: Sequence[object]) -> QemuProbe:
    """Facts from the probe's QMP answers (matched by ``id``)."""
    answers = qmp_commands.parse_probe_replies(replies)
    if answers.types is None:
        return QemuProbe(failure=answers.failure)
    if answers.sev is None:
        return QemuProbe(types=answers.types, sev_error=answers.sev_error)
    cbitpos, reduced_phys_bits = answers.sev
    sev = SevCapabilities(cbitpos=cbitpos, reduced_phys_bits=reduced_phys_bits)
    return QemuProbe(types=answers.types, sev=sev)


def probe_qemu(qemu_binary: str, accelerator: str, timeout_s: float) -> QemuProbe:
    """Ask a short-lived QEMU (no guest, ``-machine none``) what it can do."""
    argv = probe_argv(qemu_binary, accelerator)
    script = qmp_commands.probe_requests()
    try:
        _, out = binaries.output_of(argv, stdin=script, timeout_s=timeout_s)
    except (OSError, subprocess.SubprocessError) as err:
        return QemuProbe(failure=f"the probe QEMU failed: {err}")
    replies = []
    for line in out.splitlines():
        try:
            replies.append(json.loads(line))
        except ValueError:
            continue
    return parse_qmp_replies(replies)


def probe_swtpm(swtpm: str, swtpm_setup: str, timeout_s: float) -> SwtpmProbe:
    found = shutil.which(swtpm)
    if found is None:
        return SwtpmProbe(None, f"{swtpm} is not installed (Debian package swtpm)")
    if shutil.which(swtpm_setup) is None:
        return SwtpmProbe(None, f"{swtpm_setup} is not installed (Debian package swtpm-tools)")
    try:
        _, out = binaries.output_of([found, "--version"], timeout_s=timeout_s)
    except (OSError, subprocess.SubprocessError) as err:
        return SwtpmProbe(None, f"{found} --version failed: {err}")
    match = re.search(r"version (\S+?),?\s", out + " ")
    version = match.group(1) if match else out.strip() or "unknown"
    return SwtpmProbe(version, f"swtpm {version} (TPM 2.0)")


# -- the map -------------------------------------------------------------------


def _flag(sysfs_root: Path, module: str, parameter: str) -> bool | None:
    """A kvm module parameter: True/False, or None when the module is not loaded."""
    if not (sysfs_root / "module" / module).is_dir():
        return None
    try:
        value = (sysfs_root / "module" / module / "parameters" / parameter).read_text().strip()
    except OSError:
        return False
    return value in ("Y", "y", "1")


def _capability(missing: list[str], present: str) -> Capability:
    if missing:
        return Capability(available=False, reason="; ".join(missing))
    return Capability(available=True, reason=present)


def _needs_kvm(facts: _Facts) -> list[str]:
    if facts.accelerator == "kvm":
        return []
    return [f"needs KVM but this host runs TCG ({facts.accelerator_reason})"]


def _module_flag(facts: _Facts, module: str, parameter: str) -> list[str]:
    flag = _flag(facts.sysfs_root, module, parameter)
    if flag is None:
        return [f"the {module} module is not loaded"]
    if not flag:
        return [f"{module} parameter {parameter} is not enabled"]
    return []


def _qemu_type(facts: _Facts, qom_type: str) -> list[str]:
    if facts.qemu.failure:
        return [facts.qemu.failure]
    if qom_type not in facts.qemu.types:
        return [f"this QEMU build has no {qom_type} object type"]
    return []


def _confidential_firmware(facts: _Facts, variant: str) -> tuple[list[str], str]:
    chosen = firmware_for_confidential(facts.firmware, variant)
    if chosen is None:
        stateless = " stateless (-bios)" if variant in ("sev_snp", "tdx") else ""
        feature = CONFIDENTIAL_FEATURES[variant]
        return [f"no{stateless} firmware descriptor lists {feature}"], ""
    return [], f"firmware {chosen.code}"


def _amd(facts: _Facts, variant: str) -> Capability:
    missing = _needs_kvm(facts) + _module_flag(facts, "kvm_amd", variant)
    if not (facts.dev_root / "sev").exists():
        missing.append(f"{facts.dev_root / 'sev'} does not exist")
    missing += _qemu_type(facts, _QOM_TYPE[variant])
    if facts.qemu.sev is None and not facts.qemu.failure:
        missing.append(f"QMP query-sev-capabilities: {facts.qemu.sev_error}")
    no_firmware, firmware = _confidential_firmware(facts, variant)
    sev = facts.qemu.sev
    present = (
        f"kvm_amd {variant}=Y, /dev/sev, QEMU {_QOM_TYPE[variant]}, "
        f"cbitpos={sev.cbitpos if sev else '?'}, {firmware}"
    )
    return _capability(missing + no_firmware, present)


def _tdx(facts: _Facts) -> Capability:
    missing = _needs_kvm(facts) + _module_flag(facts, "kvm_intel", "tdx")
    missing += _qemu_type(facts, "tdx-guest")
    no_firmware, firmware = _confidential_firmware(facts, "tdx")
    return _capability(missing + no_firmware, f"kvm_intel tdx=Y, QEMU tdx-guest, {firmware}")


def _uefi(facts: _Facts) -> Capability:
    found = pick(facts.firmware, "uefi")
    if found is None:
        return _capability(["no UEFI firmware descriptor without secure boot (install ovmf)"], "")
    return _capability([], f"{found.code} + VARS template {found.vars_template}")


def _secure_boot(facts: _Facts) -> Capability:
    found = pick(facts.firmware, "uefi-secure-boot")
    if found is None:
        return _capability(
            ["no firmware descriptor with secure-boot + enrolled-keys + requires-smm (ovmf)"], ""
        )
    return _capability(
        [],
        f"{found.code} (read-only) + VARS template {found.vars_template} (Microsoft keys "
        f"enrolled), q35 with SMM; from {found.descriptor or 'Debian file names'}",
    )


def _vtpm(facts: _Facts) -> Capability:
    missing = [] if facts.swtpm.version else [facts.swtpm.reason]
    missing += _qemu_type(facts, "tpm-crb") + _qemu_type(facts, "tpm-emulator")
    return _capability(missing, f"{facts.swtpm.reason}, QEMU tpm-crb + tpm-emulator")


def _iommu(facts: _Facts) -> Capability:
    groups = pci.iommu_group_count(facts.sysfs_root)
    if groups == 0:
        return _capability(
            ["no IOMMU groups in /sys/kernel/iommu_groups (no IOMMU, or it is off: "
             "intel_iommu=on / amd_iommu=on)"], ""
        )  # fmt: skip
    return _capability([], f"{groups} IOMMU groups")


def _vfio(facts: _Facts) -> Capability:
    missing = [] if pci.iommu_enabled(facts.sysfs_root) else ["no IOMMU groups"]
    if not (facts.sysfs_root / "module" / "vfio_pci").is_dir():
        missing.append("the vfio_pci module is not loaded")
    if not (facts.dev_root / "vfio" / "vfio").exists():
        missing.append(f"{facts.dev_root / 'vfio' / 'vfio'} does not exist")
    return _capability(missing, "vfio-pci loaded, /dev/vfio/vfio present")


def _capability_map(facts: _Facts) -> CapabilityMap:
    return CapabilityMap(
        uefi=_uefi(facts),
        secure_boot=_secure_boot(facts),
        vtpm=_vtpm(facts),
        sev=_amd(facts, "sev"),
        sev_es=_amd(facts, "sev_es"),
        sev_snp=_amd(facts, "sev_snp"),
        tdx=_tdx(facts),
        iommu=_iommu(facts),
        vfio=_vfio(facts),
    )


def _cpu_model(proc_root: Path) -> str:
    try:
        for line in (proc_root / "cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return "unknown"


def probe_capabilities(
    host: HostFacts,
    settings: Settings,
    *,
    sysfs_root: Path = Path("/sys"),
    dev_root: Path = Path("/dev"),
    proc_root: Path = Path("/proc"),
    firmware_dirs: Sequence[Path] = DESCRIPTOR_DIRS,
    qemu: QemuProbe | None = None,
) -> HostCapabilities:
    """The full capability document (blocking: run it on a worker thread)."""
    budget = settings.host_probe_timeout_s
    if qemu is None:
        qemu = probe_qemu(settings.qemu_binary, host.accelerator, budget)
    facts = _Facts(
        accelerator=host.accelerator,
        accelerator_reason=host.accelerator_reason,
        qemu=qemu,
        swtpm=probe_swtpm(settings.swtpm_binary, settings.swtpm_setup_binary, budget),
        firmware=find_firmware(firmware_dirs),
        sysfs_root=sysfs_root,
        dev_root=dev_root,
    )
    return HostCapabilities(
        qemu_version=host.qemu_version,
        accelerator=host.accelerator,
        accelerator_reason=host.accelerator_reason,
        cpu_model=_cpu_model(proc_root),
        cpu_count=host.cpu_count,
        cpu_cores=psutil.cpu_count(logical=False),
        memory_bytes=host.memory_bytes,
        swtpm_version=facts.swtpm.version,
        qemu_types=sorted(qemu.types & RELEVANT_TYPES),
        sev=qemu.sev,
        firmware=list(facts.firmware),
        capabilities=_capability_map(facts),
        probed_at=datetime.now(UTC),
    )


async def refresh(host: HostFacts, settings: Settings) -> HostFacts:
    """``host`` with a freshly probed capability map."""
    caps = await trio.to_thread.run_sync(probe_capabilities, host, settings)
    return dataclasses.replace(host, capabilities=caps)
