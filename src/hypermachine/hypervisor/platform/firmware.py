"""The boot firmware sets, discovered from QEMU's firmware descriptors.

QEMU's interop spec (``docs/interop/firmware.json``) has distributions describe their
firmware in JSON files under ``/usr/share/qemu/firmware`` (overridable, file by file,
from ``/etc/qemu/firmware``). We read them and keep, for x86_64 q35 machines:

``bios``
    QEMU's built-in SeaBIOS (always there; no files).
``uefi``
    OVMF from flash without secure boot: read-only CODE + a per-VM copy of VARS.
``uefi-secure-boot``
    OVMF with secure boot, SMM required, Microsoft keys already enrolled in the VARS
    template (``enrolled-keys``): q35 + ``smm=on`` + secure pflash.
``confidential``
    Any descriptor listing ``amd-sev``/``amd-sev-es``/``amd-sev-snp``/``intel-tdx``
    that does not require SMM.
    SEV and SEV-ES can run from flash; SNP and TDX need a stateless image loaded with
    ``-bios`` (``device: memory``).

When no descriptor directory exists, Debian's ``ovmf`` file names are tried.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ...models import FirmwareSet

__all__ = [
    "BIOS",
    "CONFIDENTIAL_FEATURES",
    "DESCRIPTOR_DIRS",
    "find_firmware",
    "firmware_for_confidential",
    "load_descriptors",
    "pick",
]

log = logging.getLogger(__name__)

DESCRIPTOR_DIRS = (Path("/usr/share/qemu/firmware"), Path("/etc/qemu/firmware"))
CONFIDENTIAL_FEATURES = {
    "sev": "amd-sev",
    "sev_es": "amd-sev-es",
    "sev_snp": "amd-sev-snp",
    "tdx": "intel-tdx",
}
_Q35 = "pc-q35-99.0"  # any q35 version: descriptors list patterns like "pc-q35-*"
_OVMF = Path("/usr/share/OVMF")

BIOS = FirmwareSet(
    kind="bios", description="SeaBIOS, built into QEMU", device="builtin", features=[]
)


@dataclass(frozen=True)
class Descriptor:
    """The parts of one firmware descriptor we use."""

    source: Path
    description: str
    device: str
    executable: Path | None
    nvram_template: Path | None
    features: frozenset[str]

    def files_exist(self) -> bool:
        files = [p for p in (self.executable, self.nvram_template) if p is not None]
        return bool(files) and all(p.is_file() for p in files)


def _for_q35_x86_64(doc: dict[str, object]) -> bool:
    targets = doc.get("targets")
    if not isinstance(targets, list):
        return False
    for target in targets:
        if not isinstance(target, dict) or target.get("architecture") != "x86_64":
            continue
        machines = target.get("machines") or []
        if any(isinstance(m, str) and fnmatch.fnmatchcase(_Q35, m) for m in machines):
            return True
    return False


def _filename(mapping: dict[str, object], key: str) -> Path | None:
    entry = mapping.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("filename"), str):
        return Path(entry["filename"])
    return None


def _parse(path: Path) -> Descriptor | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("ignoring firmware descriptor %s: %s", path, err)
        return None
    if not isinstance(doc, dict) or "uefi" not in (doc.get("interface-types") or []):
        return None
    mapping = doc.get("mapping")
    if not isinstance(mapping, dict) or not _for_q35_x86_64(doc):
        return None
    device = str(mapping.get("device"))
    if device == "flash":
        executable = _filename(mapping, "executable")
    elif device == "memory" and isinstance(mapping.get("filename"), str):
        executable = Path(str(mapping["filename"]))
    else:
        return None
    return Descriptor(
        source=path,
        description=str(doc.get("description") or path.name),
        device=device,
        executable=executable,
        nvram_template=_filename(mapping, "nvram-template") if device == "flash" else None,
        features=frozenset(f for f in doc.get("features") or [] if isinstance(f, str)),
    )


def load_descriptors(dirs: Sequence[Path] = DESCRIPTOR_DIRS) -> list[Descriptor]:
    """Descriptors in QEMU's priority order (by file name; later dirs override a name)."""
    by_name: dict[str, Path] = {}
    for folder in dirs:
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.suffix == ".json":
                by_name[entry.name] = entry
    parsed = (_parse(by_name[name]) for name in sorted(by_name))
    return [d for d in parsed if d is not None and d.files_exist()]


def _debian_fallback() -> list[Descriptor]:
    """Debian's ovmf file names, for a host without descriptor files."""
    candidates = [
        ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd", frozenset()),
        (
            "OVMF_CODE_4M.ms.fd",
            "OVMF_VARS_4M.ms.fd",
            frozenset({"secure-boot", "requires-smm", "enrolled-keys"}),
        ),
    ]
    found = []
    for code, vars_, features in candidates:
        desc = Descriptor(
            source=_OVMF,
            description=f"OVMF {code} (Debian file name, no descriptor)",
            device="flash",
            executable=_OVMF / code,
            nvram_template=_OVMF / vars_,
            features=features,
        )
        if desc.files_exist():
            found.append(desc)
    return found


def _kinds(desc: Descriptor) -> list[str]:
    kinds = []
    secure = {"secure-boot", "requires-smm", "enrolled-keys"} <= desc.features
    if desc.device == "flash" and "secure-boot" not in desc.features:
        kinds.append("uefi")
    if desc.device == "flash" and secure:
        kinds.append("uefi-secure-boot")
    # Encrypted guests run without SMM (SEV-ES, SNP and TDX cannot have it).
    if desc.features & set(CONFIDENTIAL_FEATURES.values()) and "requires-smm" not in desc.features:
        kinds.append("confidential")
    return kinds


def _as_set(desc: Descriptor, kind: str) -> FirmwareSet:
    return FirmwareSet.model_validate(
        {
            "kind": kind,
            "description": desc.description,
            "device": "flash" if desc.device == "flash" else "memory",
            "code": str(desc.executable) if desc.executable else None,
            "vars_template": str(desc.nvram_template) if desc.nvram_template else None,
            "features": sorted(desc.features),
            "descriptor": desc.source.name if desc.source.suffix == ".json" else None,
        }
    )


def find_firmware(dirs: Sequence[Path] = DESCRIPTOR_DIRS) -> list[FirmwareSet]:
    """Every firmware set of this host, best first within each kind; BIOS first."""
    descriptors = load_descriptors(dirs) or _debian_fallback()
    sets = [BIOS]
    for desc in descriptors:
        sets.extend(_as_set(desc, kind) for kind in _kinds(desc))
    return sets


def pick(sets: Iterable[FirmwareSet], kind: str) -> FirmwareSet | None:
    """The first (highest priority) set of ``kind``."""
    return next((s for s in sets if s.kind == kind), None)


def firmware_for_confidential(sets: Iterable[FirmwareSet], variant: str) -> FirmwareSet | None:
    """Firmware that can boot a ``variant`` (sev, sev_es, sev_snp, tdx) guest.

    SNP and TDX need a stateless (``memory``) image; SEV and SEV-ES prefer one (its
    launch measurement then covers everything) but run from flash too.
    """
    feature = CONFIDENTIAL_FEATURES[variant]
    # SEV-ES firmware is SEV firmware; descriptors often list only amd-sev for both.
    accepted = {feature, "amd-sev"} if variant == "sev_es" else {feature}
    fitting = [s for s in sets if s.kind == "confidential" and accepted & set(s.features)]
    stateless = [s for s in fitting if s.device == "memory"]
    if variant in ("sev_snp", "tdx"):
        return stateless[0] if stateless else None
    preferred = stateless or fitting
    return preferred[0] if preferred else None
