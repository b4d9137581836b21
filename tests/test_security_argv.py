"""Firmware, vTPM and memory-encryption arguments, per variant, against fake host facts."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hypermachine.config import Settings, load_settings
from hypermachine.errors import Unsupported
from hypermachine.hypervisor.platform import vmplatform
from hypermachine.hypervisor.platform.host import HostFacts
from hypermachine.hypervisor.qemu.argv import BootSource, Confidential, Platform
from hypermachine.hypervisor.vmfiles.layout import VmPaths
from hypermachine.models import (
    Capability,
    CapabilityMap,
    CreateVmRequest,
    FirmwareSet,
    HostCapabilities,
    SecuritySpec,
    SevCapabilities,
    VmSpec,
)
from test_cmdline import PATHS, argv_for, make_vm, option

KERNEL = BootSource(kernel=Path("/img/vmlinuz"), initrd=Path("/img/initrd"), append="x")


def machine(argv: list[str]) -> str:
    return option(argv, "-machine")[0]


def objects(argv: list[str]) -> dict[str, dict[str, Any]]:
    found = [json.loads(o) for o in option(argv, "-object")]
    return {o["qom-type"]: o for o in found}


def build(platform: Platform, accel: str = "kvm", **vm: Any) -> list[str]:
    from hypermachine.hypervisor.vm_argv import build_argv

    return build_argv(
        make_vm(**vm),
        BootSource(),
        PATHS,
        qemu_binary="qemu-system-x86_64",
        accelerator=accel,
        qmp_fd=7,
        nic_fd=8,
        platform=platform,
    )


def test_default_platform_changes_nothing() -> None:
    argv = argv_for(make_vm())
    assert machine(argv) == "q35"
    assert "-bios" not in argv and "-tpmdev" not in argv and "-object" not in argv


def test_secure_boot_pflash_smm_and_secure_flash() -> None:
    code, vars_ = Path("/fw/OVMF_CODE_4M.ms.fd"), Path("/var/lib/hm/vms/vm-1/efivars.fd")
    argv = build(Platform(firmware_code=code, firmware_vars=vars_, secure_boot=True), "tcg")
    assert machine(argv) == "q35,smm=on,pflash0=fw-code,pflash1=fw-vars"
    nodes = {b["node-name"]: b for b in map(json.loads, option(argv, "-blockdev"))}
    assert nodes["fw-code"] == {"driver": "file", "node-name": "fw-code",
                                "filename": str(code), "read-only": True}  # fmt: skip
    assert nodes["fw-vars"]["filename"] == str(vars_) and "read-only" not in nodes["fw-vars"]
    assert option(argv, "-global") == ["driver=cfi.pflash01,property=secure,value=on"]


def test_plain_uefi_has_no_smm_and_no_secure_flash() -> None:
    argv = build(Platform(firmware_code=Path("/fw/c.fd"), firmware_vars=Path("/v/vars.fd")))
    assert machine(argv) == "q35,pflash0=fw-code,pflash1=fw-vars"
    assert "-global" not in argv


def test_pflash_without_vars_is_refused() -> None:
    with pytest.raises(ValueError, match="VARS"):
        build(Platform(firmware_code=Path("/fw/c.fd")))


def test_vtpm_chardev_tpmdev_crb() -> None:
    argv = build(Platform(tpm_socket=Path("/run/a,b/vm-1/swtpm.sock")), "tcg")
    assert "socket,id=tpmchr0,path=/run/a,,b/vm-1/swtpm.sock" in option(argv, "-chardev")
    assert option(argv, "-tpmdev") == ["emulator,id=tpm0,chardev=tpmchr0"]
    devices = [json.loads(d) for d in option(argv, "-device")]
    assert {"driver": "tpm-crb", "tpmdev": "tpm0", "id": "tpm0-crb"} in devices


@pytest.mark.parametrize(
    ("variant", "policy"), [("sev", 0x1), ("sev_es", 0x5)], ids=["sev", "sev-es"]
)
def test_sev_and_sev_es(variant: str, policy: int) -> None:
    cc = Confidential(variant=variant, cbitpos=51, reduced_phys_bits=1, policy=policy)
    fw = Platform(firmware_code=Path("/fw/c.fd"), firmware_vars=Path("/v.fd"), confidential=cc)
    argv = build(fw)
    assert machine(argv) == (
        "q35,smm=off,pflash0=fw-code,pflash1=fw-vars,confidential-guest-support=cgs0"
    )
    assert objects(argv)["sev-guest"] == {
        "qom-type": "sev-guest", "id": "cgs0", "cbitpos": 51, "reduced-phys-bits": 1,
        "policy": policy,
    }  # fmt: skip
    assert option(argv, "-accel") == ["kvm"] and option(argv, "-cpu") == ["host"]


def test_sev_snp_memfd_backend_and_stateless_bios() -> None:
    cc = Confidential(
        variant="sev_snp", cbitpos=51, reduced_phys_bits=1, policy=0x30000, kernel_hashes=True
    )
    argv = build(Platform(firmware_bios=Path("/fw/OVMF.amdsev.fd"), confidential=cc),
                 memory_mb=4096)  # fmt: skip
    assert machine(argv) == "q35,smm=off,confidential-guest-support=cgs0,memory-backend=ram0"
    found = objects(argv)
    assert found["sev-snp-guest"]["policy"] == 0x30000
    assert found["sev-snp-guest"]["kernel-hashes"] is True
    assert found["memory-backend-memfd"] == {"qom-type": "memory-backend-memfd", "id": "ram0",
                                             "size": 4096 << 20, "share": True}  # fmt: skip
    assert option(argv, "-bios") == ["/fw/OVMF.amdsev.fd"]
    assert not any("fw-code" in b for b in option(argv, "-blockdev"))  # no pflash


def test_tdx_guest() -> None:
    argv = build(Platform(firmware_bios=Path("/fw/TDVF.fd"), confidential=Confidential("tdx")))
    assert machine(argv) == "q35,smm=off,confidential-guest-support=cgs0,kernel-irqchip=split"
    assert objects(argv) == {"tdx-guest": {"qom-type": "tdx-guest", "id": "cgs0"}}
    assert option(argv, "-bios") == ["/fw/TDVF.fd"]


@pytest.mark.parametrize("variant", ["sev", "sev_es", "sev_snp", "tdx"])
def test_confidential_never_with_tcg(variant: str) -> None:
    with pytest.raises(ValueError, match="needs KVM"):
        build(Platform(confidential=Confidential(variant)), "tcg")


# -- resolving a VM into a Platform against fake host capabilities ---------------------


def fake_host(tmp_path: Path, *, sev: bool = True) -> HostFacts:
    template = tmp_path / "OVMF_VARS.fd"
    template.write_bytes(b"\x00" * 4096)
    yes = Capability(available=True, reason="fake")
    sets = [
        FirmwareSet(kind="uefi", description="u", device="flash", code="/fw/CODE.fd",
                    vars_template=str(template), features=[]),
        FirmwareSet(kind="uefi-secure-boot", description="sb", device="flash",
                    code="/fw/CODE.ms.fd", vars_template=str(template),
                    features=["secure-boot", "requires-smm", "enrolled-keys"]),
        FirmwareSet(kind="confidential", description="c", device="flash", code="/fw/CODE.fd",
                    vars_template=str(template), features=["amd-sev", "amd-sev-es"]),
        FirmwareSet(kind="confidential", description="snp", device="memory",
                    code="/fw/AMDSEV.fd", features=["amd-sev", "amd-sev-snp"]),
        FirmwareSet(kind="confidential", description="tdx", device="memory",
                    code="/fw/TDVF.fd", features=["intel-tdx"]),
    ]  # fmt: skip
    caps = HostCapabilities(
        qemu_version="10.1.0", accelerator="kvm", accelerator_reason="fake", cpu_model="fake",
        cpu_count=8, cpu_cores=4, memory_bytes=1 << 34, swtpm_version=None, qemu_types=[],
        sev=SevCapabilities(cbitpos=47, reduced_phys_bits=5) if sev else None,
        firmware=sets, capabilities=CapabilityMap(**{k: yes for k in CapabilityMap.model_fields}),
        probed_at=datetime.now(UTC),
    )  # fmt: skip
    return HostFacts("kvm", "fake", "10.1.0", 8, 1 << 34, capabilities=caps)


def settings_for(tmp_path: Path) -> Settings:
    return load_settings(environ={}, overrides={"data_dir": tmp_path / "data"})


def vm_paths(tmp_path: Path) -> VmPaths:
    return VmPaths(vm_dir=tmp_path / "vms" / "vm-1", run_dir=tmp_path / "run" / "vm-1")


async def platform_for(tmp_path: Path, boot: BootSource | None = None, **spec: Any) -> Platform:
    vm = make_vm(**spec)
    boot = boot or BootSource()
    return await vmplatform.launch_platform(
        vm, boot, vm_paths(tmp_path), fake_host(tmp_path), settings_for(tmp_path), None
    )


async def test_secure_boot_platform_copies_the_enrolled_vars(tmp_path: Path) -> None:
    vars_ = vmplatform.vars_file(vm_paths(tmp_path))
    vars_.parent.mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.write_bytes(b"host file")
    vars_.with_name(vars_.name + ".partial").symlink_to(outside)  # planted by the QEMU user
    platform = await platform_for(tmp_path, security={"secure_boot": True}, firmware="uefi")
    assert outside.read_bytes() == b"host file"  # the copy replaced the link
    assert platform == Platform(firmware_code=Path("/fw/CODE.ms.fd"), firmware_vars=vars_,
                                secure_boot=True)  # fmt: skip
    assert vars_.read_bytes() == b"\x00" * 4096 and vars_.stat().st_mode & 0o777 == 0o600
    vars_.write_bytes(b"guest wrote this")  # a second launch keeps the VM's own copy
    await platform_for(tmp_path, security={"secure_boot": True}, firmware="uefi")
    assert vars_.read_bytes() == b"guest wrote this"


@pytest.mark.parametrize(
    ("variant", "policy"), [("sev", 0x1), ("sev_es", 0x5), ("sev_snp", 0x30000)]
)
async def test_sev_numbers_come_from_the_host(tmp_path: Path, variant: str, policy: int) -> None:
    platform = await platform_for(tmp_path, KERNEL, security={"memory_encryption": variant})
    assert platform.confidential == Confidential(
        variant=variant, cbitpos=47, reduced_phys_bits=5, policy=policy, kernel_hashes=True
    )
    # the stateless image is preferred: the launch measurement then covers all firmware
    assert platform.firmware_bios == Path("/fw/AMDSEV.fd") and platform.firmware_code is None


async def test_sev_falls_back_to_flash_firmware(tmp_path: Path) -> None:
    host = fake_host(tmp_path)
    assert host.capabilities is not None
    flash_only = [f for f in host.capabilities.firmware if f.device == "flash"]
    caps = host.capabilities.model_copy(update={"firmware": flash_only})
    vm = make_vm(security={"memory_encryption": "sev"})
    platform = await vmplatform.launch_platform(
        vm, BootSource(), vm_paths(tmp_path), replace(host, capabilities=caps),
        settings_for(tmp_path), None,
    )  # fmt: skip
    assert platform.firmware_code == Path("/fw/CODE.fd") and platform.firmware_vars is not None
    snp = make_vm(security={"memory_encryption": "sev_snp"})
    with pytest.raises(Unsupported):  # SNP cannot run from flash
        await vmplatform.launch_platform(
            snp, BootSource(), vm_paths(tmp_path), replace(host, capabilities=caps),
            settings_for(tmp_path), None,
        )  # fmt: skip


async def test_explicit_policy_and_tdx(tmp_path: Path) -> None:
    platform = await platform_for(tmp_path, security={"memory_encryption": "sev", "policy": 3})
    assert platform.confidential is not None and platform.confidential.policy == 3
    tdx = await platform_for(tmp_path, security={"memory_encryption": "tdx"})
    assert tdx.confidential == Confidential("tdx") and tdx.firmware_bios == Path("/fw/TDVF.fd")


async def test_no_sev_capabilities_is_refused(tmp_path: Path) -> None:
    vm = make_vm(security={"memory_encryption": "sev"})
    with pytest.raises(Unsupported):
        await vmplatform.launch_platform(
            vm, BootSource(), vm_paths(tmp_path), fake_host(tmp_path, sev=False),
            settings_for(tmp_path), None,
        )  # fmt: skip


# -- the spec --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "security_",
    [
        {"memory_encryption": "sev", "policy": 0x5},  # ES bit on plain SEV
        {"memory_encryption": "sev_es", "policy": 0x1},  # ES without its bit
        {"memory_encryption": "sev_snp", "policy": 0x10000},  # SNP bit 17 missing
        {"memory_encryption": "tdx", "policy": 1},
        {"memory_encryption": "none", "policy": 1},
        {"memory_encryption": "sev", "policy": 1 << 40},
        {"memory_encryption": "sev-es"},
    ],
)
def test_bad_security_specs(security_: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        VmSpec.model_validate({"name": "a", "image": "tiny", "security": security_})


@pytest.mark.parametrize(
    "spec",
    [
        {"firmware": "bios", "security": {"secure_boot": True}},
        {"firmware": "bios", "security": {"memory_encryption": "sev"}},
        {"firmware": "efi"},
    ],
)
def test_firmware_must_fit_security(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        VmSpec(name="a", image="tiny", **spec)


@pytest.mark.parametrize(
    ("asked", "security_", "image", "resolved"),
    [
        (None, {}, "bios", "bios"),
        (None, {}, "uefi", "uefi"),
        (None, {"secure_boot": True}, "bios", "uefi"),
        (None, {"memory_encryption": "tdx"}, "bios", "uefi"),
        ("uefi", {}, "bios", "uefi"),
        ("bios", {}, "uefi", "bios"),
    ],
)
def test_firmware_defaults(
    asked: str | None, security_: dict[str, Any], image: str, resolved: str
) -> None:
    request = CreateVmRequest.model_validate(
        {"name": "a", "image": "x", "firmware": asked, "security": security_}
    )
    assert vmplatform.resolve_firmware(request, image).firmware == resolved


def test_direct_kernel_secure_boot_is_called_out() -> None:
    spec = VmSpec(name="a", image="tiny", security=SecuritySpec(secure_boot=True))
    notes = vmplatform.security_notes(spec, direct_kernel=True)
    assert len(notes) == 1 and "does not verify this VM's kernel" in notes[0]
    assert vmplatform.security_notes(spec, direct_kernel=False) == []
