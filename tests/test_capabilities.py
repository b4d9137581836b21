"""Host capability probing against fake sysfs trees, fake descriptors and fake QMP answers,
and once against this host's real QEMU.

The fake QMP replies have the shapes the real commands document (``qom-list-types``:
a list of ``{"name", "parent"}``; ``query-sev-capabilities``: ``{pdh, cert-chain,
cpu0-id, cbitpos, reduced-phys-bits}`` or a GenericError).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from hypermachine.config import Settings, load_settings
from hypermachine.errors import Unsupported
from hypermachine.hypervisor.platform.capabilities import (
    parse_qmp_replies,
    probe_capabilities,
    probe_qemu,
)
from hypermachine.hypervisor.platform.firmware import find_firmware, firmware_for_confidential
from hypermachine.hypervisor.platform.host import HostFacts, check_supported
from hypermachine.models import HostCapabilities, SecuritySpec, VmSpec

SEV_CAPS = {"pdh": "AAAA", "cert-chain": "BBBB", "cpu0-id": "CCCC", "cbitpos": 51,
            "reduced-phys-bits": 1}  # fmt: skip
BASE_TYPES = ["tpm-crb", "tpm-emulator", "tpm-tis", "memory-backend-memfd", "q35-machine"]


def replies(types: list[str], sev: dict[str, Any] | str) -> list[dict[str, Any]]:
    """What the probe QEMU prints for its four commands (+ the greeting and an event)."""
    sev_reply = (
        {"return": sev, "id": "sev"}
        if isinstance(sev, dict)
        else {"id": "sev", "error": {"class": "GenericError", "desc": sev}}
    )
    return [
        {"QMP": {"version": {"qemu": {"major": 9, "minor": 2, "micro": 0}}, "capabilities": []}},
        {"return": {}, "id": "negotiate"},
        {"return": [{"name": t, "parent": "object"} for t in types], "id": "types"},
        sev_reply,
        {"return": {}, "id": "quit"},
        {"event": "SHUTDOWN", "data": {"guest": False, "reason": "host-qmp-quit"}},
    ]


def touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def descriptor(folder: Path, name: str, features: list[str], *, memory: bool = False) -> None:
    code = touch(folder.parent / "fw" / f"{name}.code.fd")
    vars_ = touch(folder.parent / "fw" / f"{name}.vars.fd")
    mapping: dict[str, Any] = (
        {"device": "memory", "filename": str(code)}
        if memory
        else {
            "device": "flash",
            "executable": {"filename": str(code), "format": "raw"},
            "nvram-template": {"filename": str(vars_), "format": "raw"},
        }
    )
    doc = {
        "description": name,
        "interface-types": ["uefi"],
        "mapping": mapping,
        "targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}],
        "features": features,
    }
    touch(folder / f"{name}.json", json.dumps(doc))


@pytest.fixture
def firmware_dir(tmp_path: Path) -> Path:
    """Debian's three descriptors, plus stateless SNP and TDX images."""
    folder = tmp_path / "qemu-firmware"
    descriptor(folder, "40-secure-enrolled", ["amd-sev", "enrolled-keys", "requires-smm",
                                              "secure-boot"])  # fmt: skip
    descriptor(folder, "50-secure", ["amd-sev", "requires-smm", "secure-boot"])
    descriptor(folder, "60-plain", ["amd-sev", "amd-sev-es"])
    descriptor(folder, "70-snp", ["amd-sev", "amd-sev-es", "amd-sev-snp"], memory=True)
    descriptor(folder, "80-tdx", ["intel-tdx"], memory=True)
    return folder


def sysfs(tmp_path: Path, params: dict[str, dict[str, str]], modules: tuple[str, ...] = ()) -> Path:
    root = tmp_path / "sys"
    for module, values in params.items():
        for name, value in values.items():
            touch(root / "module" / module / "parameters" / name, value + "\n")
    for module in modules:
        (root / "module" / module).mkdir(parents=True, exist_ok=True)
    (root / "kernel").mkdir(parents=True, exist_ok=True)
    return root


def host(accelerator: str = "kvm") -> HostFacts:
    reason = "auto: /dev/kvm is usable" if accelerator == "kvm" else "auto: no kvm"
    return HostFacts(accelerator, reason, "9.2.0", 8, 16 << 30)


def settings(**overrides: Any) -> Settings:
    return load_settings(environ={}, overrides={"data_dir": "/nonexistent", **overrides})


def probe(
    tmp_path: Path,
    *,
    sys_root: Path,
    firmware_dir: Path,
    types: list[str],
    sev: dict[str, Any] | str,
    dev: tuple[str, ...] = (),
    accelerator: str = "kvm",
    **settings_overrides: Any,
) -> HostCapabilities:
    dev_root = tmp_path / "dev"
    dev_root.mkdir(exist_ok=True)
    for name in dev:
        touch(dev_root / name)
    return probe_capabilities(
        host(accelerator),
        settings(**settings_overrides),
        sysfs_root=sys_root,
        dev_root=dev_root,
        proc_root=tmp_path / "proc",
        firmware_dirs=[firmware_dir],
        qemu=parse_qmp_replies(replies(types, sev)),
    )


def test_parse_qmp_replies() -> None:
    facts = parse_qmp_replies(replies([*BASE_TYPES, "sev-guest"], SEV_CAPS))
    assert "sev-guest" in facts.types and "tdx-guest" not in facts.types
    assert facts.sev is not None and (facts.sev.cbitpos, facts.sev.reduced_phys_bits) == (51, 1)
    failed = parse_qmp_replies(replies(BASE_TYPES, "SEV is not enabled in KVM"))
    assert failed.sev is None and failed.sev_error == "SEV is not enabled in KVM"
    assert parse_qmp_replies([]).failure is not None


def test_amd_sev_es_host(tmp_path: Path, firmware_dir: Path) -> None:
    root = sysfs(tmp_path, {"kvm_amd": {"sev": "Y", "sev_es": "Y", "sev_snp": "N"}})
    caps = probe(tmp_path, sys_root=root, firmware_dir=firmware_dir,
                 types=[*BASE_TYPES, "sev-guest"], sev=SEV_CAPS, dev=("sev",))  # fmt: skip
    cap = caps.capabilities
    assert cap.sev.available and cap.sev_es.available, (cap.sev, cap.sev_es)
    assert "cbitpos=51" in cap.sev.reason
    assert not cap.sev_snp.available
    assert "kvm_amd parameter sev_snp is not enabled" in cap.sev_snp.reason
    assert "this QEMU build has no sev-snp-guest object type" in cap.sev_snp.reason
    assert not cap.tdx.available and "the kvm_intel module is not loaded" in cap.tdx.reason
    assert caps.sev is not None and caps.sev.cbitpos == 51
    assert caps.qemu_types == sorted(["memory-backend-memfd", "sev-guest", "tpm-crb",
                                      "tpm-emulator", "tpm-tis"])  # fmt: skip


def test_amd_snp_host(tmp_path: Path, firmware_dir: Path) -> None:
    root = sysfs(tmp_path, {"kvm_amd": {"sev": "1", "sev_es": "1", "sev_snp": "1"}})
    caps = probe(tmp_path, sys_root=root, firmware_dir=firmware_dir,
                 types=[*BASE_TYPES, "sev-guest", "sev-snp-guest"], sev=SEV_CAPS,
                 dev=("sev",))  # fmt: skip
    assert caps.capabilities.sev_snp.available, caps.capabilities.sev_snp
    assert "70-snp.code.fd" in caps.capabilities.sev_snp.reason  # the stateless image


def test_snp_needs_stateless_firmware(tmp_path: Path) -> None:
    folder = tmp_path / "fw-flash-only"
    descriptor(folder, "60-plain", ["amd-sev", "amd-sev-snp"])
    root = sysfs(tmp_path, {"kvm_amd": {"sev": "Y", "sev_es": "Y", "sev_snp": "Y"}})
    caps = probe(tmp_path, sys_root=root, firmware_dir=folder,
                 types=[*BASE_TYPES, "sev-guest", "sev-snp-guest"], sev=SEV_CAPS,
                 dev=("sev",))  # fmt: skip
    assert caps.capabilities.sev.available
    assert not caps.capabilities.sev_snp.available
    assert "no stateless (-bios) firmware descriptor lists amd-sev-snp" in (
        caps.capabilities.sev_snp.reason
    )


def test_intel_tdx_host(tmp_path: Path, firmware_dir: Path) -> None:
    root = sysfs(tmp_path, {"kvm_intel": {"tdx": "Y"}})
    caps = probe(tmp_path, sys_root=root, firmware_dir=firmware_dir,
                 types=[*BASE_TYPES, "tdx-guest"], sev="SEV is not enabled in KVM")  # fmt: skip
    cap = caps.capabilities
    assert cap.tdx.available, cap.tdx
    assert not cap.sev.available
    assert "the kvm_amd module is not loaded" in cap.sev.reason
    assert "/dev/sev does not exist" in cap.sev.reason
    assert "QMP query-sev-capabilities: SEV is not enabled in KVM" in cap.sev.reason


def test_tdx_disabled_in_kvm_intel(tmp_path: Path, firmware_dir: Path) -> None:
    root = sysfs(tmp_path, {"kvm_intel": {"tdx": "N"}})
    caps = probe(tmp_path, sys_root=root, firmware_dir=firmware_dir,
                 types=[*BASE_TYPES, "tdx-guest"], sev="KVM not enabled")  # fmt: skip
    assert caps.capabilities.tdx.reason == "kvm_intel parameter tdx is not enabled"


def test_tcg_host_refuses_everything_confidential(tmp_path: Path, firmware_dir: Path) -> None:
    root = sysfs(tmp_path, {"kvm_amd": {"sev": "Y", "sev_es": "Y"}})
    caps = probe(tmp_path, sys_root=root, firmware_dir=firmware_dir, accelerator="tcg",
                 types=[*BASE_TYPES, "sev-guest"], sev="KVM not enabled",
                 dev=("sev",))  # fmt: skip
    for name in ("sev", "sev_es", "sev_snp", "tdx"):
        cap = getattr(caps.capabilities, name)
        assert not cap.available
        assert cap.reason.startswith("needs KVM but this host runs TCG (auto: no kvm)"), cap


def test_uefi_secure_boot_vtpm_iommu_vfio(tmp_path: Path, firmware_dir: Path) -> None:
    root = sysfs(tmp_path, {}, modules=("vfio_pci",))
    for group in ("0", "1", "2"):
        (root / "kernel" / "iommu_groups" / group).mkdir(parents=True)
    caps = probe(tmp_path, sys_root=root, firmware_dir=firmware_dir, types=BASE_TYPES,
                 sev="KVM not enabled", dev=("vfio/vfio",))  # fmt: skip
    cap = caps.capabilities
    assert cap.uefi.available and "60-plain.code.fd" in cap.uefi.reason
    assert cap.secure_boot.available and "40-secure-enrolled.code.fd" in cap.secure_boot.reason
    assert cap.iommu.available and cap.iommu.reason == "3 IOMMU groups"
    assert cap.vfio.available
    if shutil.which("swtpm") and shutil.which("swtpm_setup"):
        assert cap.vtpm.available, cap.vtpm
        assert caps.swtpm_version and cap.vtpm.reason.startswith(f"swtpm {caps.swtpm_version}")


def test_missing_pieces_are_named(tmp_path: Path) -> None:
    empty = tmp_path / "no-descriptors"
    empty.mkdir()
    root = sysfs(tmp_path, {})
    caps = probe(tmp_path, sys_root=root, firmware_dir=empty, types=["q35-machine"],
                 sev="KVM not enabled", swtpm_binary="no-such-swtpm")  # fmt: skip
    cap = caps.capabilities
    assert cap.vtpm.reason.startswith("no-such-swtpm is not installed (Debian package swtpm)")
    assert "this QEMU build has no tpm-crb object type" in cap.vtpm.reason
    assert not cap.iommu.available and "no IOMMU groups" in cap.iommu.reason
    assert not cap.vfio.available and "the vfio_pci module is not loaded" in cap.vfio.reason
    if not Path("/usr/share/OVMF").exists():  # else the Debian file-name fallback finds OVMF
        assert not cap.uefi.available and not cap.secure_boot.available


def test_descriptor_priority_and_filtering(tmp_path: Path) -> None:
    share, etc = tmp_path / "share", tmp_path / "etc"
    descriptor(share, "50-sb", ["secure-boot", "requires-smm", "enrolled-keys"])
    descriptor(share, "60-plain", [])
    # /etc overrides a file of the same name: here it disables the secure-boot set
    touch(etc / "50-sb.json", "{}")
    # for another architecture: ignored
    other = {
        "interface-types": ["uefi"],
        "targets": [{"architecture": "aarch64", "machines": ["virt-*"]}],
        "mapping": {"device": "memory", "filename": "/x"},
    }
    touch(share / "10-arm.json", json.dumps(other))
    touch(share / "20-broken.json", "{not json")
    sets = find_firmware([share, etc])
    assert [s.kind for s in sets] == ["bios", "uefi"]
    assert sets[1].descriptor == "60-plain.json"


def test_confidential_firmware_choice(firmware_dir: Path) -> None:
    sets = find_firmware([firmware_dir])
    sev = firmware_for_confidential(sets, "sev")
    snp = firmware_for_confidential(sets, "sev_snp")
    tdx = firmware_for_confidential(sets, "tdx")
    assert sev is not None and sev.device == "memory"  # stateless preferred
    assert snp is not None and snp.code and snp.code.endswith("70-snp.code.fd")
    assert tdx is not None and tdx.code and tdx.code.endswith("80-tdx.code.fd")
    # secure-boot (SMM) images are never offered to encrypted guests
    assert all("requires-smm" not in s.features for s in sets if s.kind == "confidential")


def test_check_supported_refuses_exactly_what_is_missing(
    tmp_path: Path, firmware_dir: Path
) -> None:
    root = sysfs(tmp_path, {"kvm_amd": {"sev": "Y", "sev_es": "N"}})
    caps = probe(tmp_path, sys_root=root, firmware_dir=firmware_dir,
                 types=[*BASE_TYPES, "sev-guest"], sev=SEV_CAPS, dev=("sev",))  # fmt: skip
    facts = HostFacts("kvm", "auto", "9.2.0", 8, 16 << 30, capabilities=caps)
    ok = VmSpec(name="a", image="tiny", security=SecuritySpec(memory_encryption="sev", vtpm=True))
    if caps.capabilities.vtpm.available:
        check_supported(ok, facts)  # nothing raised
    es = VmSpec(name="a", image="tiny", security=SecuritySpec(memory_encryption="sev_es"))
    with pytest.raises(Unsupported) as refused:
        check_supported(es, facts)
    assert refused.value.details["unsupported"] == {
        "security.memory_encryption": "sev_es is not available: "
        "kvm_amd parameter sev_es is not enabled"
    }


def test_unprobed_host_refuses_security() -> None:
    spec = VmSpec(name="a", image="tiny", security=SecuritySpec(secure_boot=True))
    with pytest.raises(Unsupported) as refused:
        check_supported(spec, host())
    unsupported = refused.value.details["unsupported"]
    assert (
        isinstance(unsupported, dict) and "not been probed" in unsupported["security.secure_boot"]
    )


def test_real_qemu_answers_the_probe() -> None:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    facts = probe_qemu(qemu, "tcg", 30)
    assert facts.failure is None
    assert {"tpm-crb", "tpm-emulator"} <= facts.types
    assert facts.sev is None and facts.sev_error  # no SEV under TCG: QEMU says why
