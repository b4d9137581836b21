"""What this host can do: the accelerator, QEMU's version, CPUs and memory.

Probed once at start-up; the capability map (firmware, vTPM, SEV/TDX, IOMMU) is
added by :mod:`.capabilities` when the manager starts, and refreshed on demand.
``auto`` picks KVM only when it can run a stock guest:
``/dev/kvm`` must open read-write and must not be PVM's (``kvm_pvm``), whose
``/dev/kvm`` hangs a stock kernel in early boot.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from ...config import Accelerator
from ...errors import Unsupported
from ...models import HostCapabilities, VmSpec
from . import binaries

__all__ = ["HostFacts", "check_supported", "choose_accelerator", "probe_host"]


@dataclass(frozen=True)
class HostFacts:
    accelerator: str  # "kvm" or "tcg"
    accelerator_reason: str
    qemu_version: str
    cpu_count: int
    memory_bytes: int
    capabilities: HostCapabilities | None = None


def _kvm_blocker(sysfs_root: Path, dev_kvm: Path) -> str | None:
    """Why KVM cannot run a stock guest here, or None when it can."""
    if (sysfs_root / "module" / "kvm_pvm").exists():
        return "/dev/kvm is provided by kvm_pvm, which cannot boot a stock kernel"
    if not dev_kvm.exists():
        return "/dev/kvm does not exist"
    try:
        fd = os.open(dev_kvm, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        return f"/dev/kvm cannot be opened: {err.strerror}"
    os.close(fd)
    if not any((sysfs_root / "module" / m).exists() for m in ("kvm_intel", "kvm_amd")):
        return "neither kvm_intel nor kvm_amd is loaded"
    return None


def choose_accelerator(
    wanted: Accelerator, *, sysfs_root: Path = Path("/sys"), dev_kvm: Path = Path("/dev/kvm")
) -> tuple[str, str]:
    """The accelerator to use and why.

    Raises:
        ValueError: ``kvm`` was asked for explicitly and /dev/kvm cannot be used.
    """
    if wanted == "tcg":
        return "tcg", "configured"
    blocker = _kvm_blocker(sysfs_root, dev_kvm)
    if wanted == "kvm":
        if blocker and "kvm_pvm" not in blocker:
            raise ValueError(f"accelerator kvm was configured but {blocker}")
        return "kvm", "configured"
    if blocker:
        return "tcg", f"auto: {blocker}"
    return "kvm", "auto: /dev/kvm is usable"


def _qemu_version(qemu_binary: str) -> str:
    try:
        status, out = binaries.output_of([qemu_binary, "--version"], timeout_s=10)
    except (OSError, subprocess.SubprocessError) as err:
        raise RuntimeError(f"cannot run {qemu_binary}: {err}") from err
    if status != 0:
        raise RuntimeError(f"cannot run {qemu_binary}: --version exited with {status}")
    match = re.search(r"version (\d+\.\d+\.\d+)", out)
    return match.group(1) if match else out.strip()


def probe_host(qemu_binary: str, wanted: Accelerator) -> HostFacts:
    accelerator, reason = choose_accelerator(wanted)
    return HostFacts(
        accelerator=accelerator,
        accelerator_reason=reason,
        qemu_version=_qemu_version(qemu_binary),
        cpu_count=os.cpu_count() or 1,
        memory_bytes=psutil.virtual_memory().total,
    )


def check_supported(spec: VmSpec, host: HostFacts, also: Mapping[str, str] | None = None) -> None:
    """Refuse a spec this server cannot honour on this host, naming every reason.

    A VM must never start silently lacking something its client asked for.
    ``also`` adds the network and device reasons (``HostResources.unsupported``).

    Raises:
        Unsupported: with ``details.unsupported`` mapping each field to its reason.
    """
    reasons: dict[str, str] = dict(also or {})
    reasons.update(_capability_reasons(spec, host.capabilities))
    if reasons:
        raise Unsupported(
            "this host cannot honour: " + "; ".join(f"{k}: {v}" for k, v in reasons.items()),
            unsupported=reasons,
        )


def _wanted_capabilities(spec: VmSpec) -> dict[str, str]:
    """The spec field asking for each capability it needs."""
    wanted: dict[str, str] = {}
    security = spec.security
    if security.secure_boot:
        wanted["security.secure_boot"] = "secure_boot"
    elif spec.firmware == "uefi":
        wanted["firmware"] = "uefi"
    if security.vtpm:
        wanted["security.vtpm"] = "vtpm"
    if security.memory_encryption != "none":
        wanted["security.memory_encryption"] = security.memory_encryption
    return wanted


def _capability_reasons(spec: VmSpec, caps: HostCapabilities | None) -> dict[str, str]:
    reasons: dict[str, str] = {}
    for field_name, capability in _wanted_capabilities(spec).items():
        if caps is None:
            reasons[field_name] = "the host's capabilities have not been probed"
            continue
        cap = getattr(caps.capabilities, capability)
        if not cap.available:
            reasons[field_name] = f"{capability} is not available: {cap.reason}"
    return reasons
