"""The host's capability map: what a VM here may ask for, and why not."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .base import _Strict

__all__ = [
    "Capability",
    "CapabilityMap",
    "FirmwareKind",
    "FirmwareSet",
    "HostCapabilities",
    "SevCapabilities",
]

# The kinds of firmware set a host may have (platform/firmware.py); a VM boots from one.
FirmwareKind = Literal["bios", "uefi", "uefi-secure-boot", "confidential"]


class Capability(_Strict):
    """One thing the host can or cannot do, and why."""

    available: bool
    reason: str = Field(description="Why not when unavailable; what provides it when available.")


class CapabilityMap(_Strict):
    uefi: Capability
    secure_boot: Capability
    vtpm: Capability
    sev: Capability
    sev_es: Capability
    sev_snp: Capability
    tdx: Capability
    iommu: Capability
    vfio: Capability


class FirmwareSet(_Strict):
    """A boot firmware this host has, found from QEMU's firmware descriptors."""

    kind: FirmwareKind
    description: str
    device: Literal["builtin", "flash", "memory"] = Field(
        description="builtin: QEMU's SeaBIOS; flash: pflash CODE + per-VM VARS; memory: -bios."
    )
    code: str | None = None
    vars_template: str | None = None
    features: list[str] = Field(default_factory=list)
    descriptor: str | None = Field(default=None, description="The descriptor JSON it came from.")


class SevCapabilities(_Strict):
    """From QMP ``query-sev-capabilities``."""

    cbitpos: int
    reduced_phys_bits: int


class HostCapabilities(_Strict):
    """What an agent may ask for on this host, probed at start-up (and on demand)."""

    qemu_version: str
    accelerator: str
    accelerator_reason: str
    cpu_model: str
    cpu_count: int
    cpu_cores: int | None
    memory_bytes: int
    swtpm_version: str | None
    qemu_types: list[str] = Field(
        description="Confidential-computing and TPM object types this QEMU build has."
    )
    sev: SevCapabilities | None
    firmware: list[FirmwareSet]
    capabilities: CapabilityMap
    probed_at: datetime
